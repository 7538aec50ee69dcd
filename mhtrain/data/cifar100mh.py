"""The CIFAR-100-MH format: images with real multihead labels, and heads from its metadata.

A dataset directory holds pickled `train_batch` and `test_batch`, each a dict with `data`
(N × H·W·C uint8, flattened HWC) and `labels` (one byte record per sample:
`[n][id₁][val₁]…[idₙ][valₙ]`), and `cifar100mh_dataset_info.json` with `format`, `image_size`
("HxWxC"), `parameter_names` (id -> head name) and `parameter_mappings` (name -> min, max,
description). `python -m mhtrain.data.cifar100mh build --from mnist --out DIR` writes one.

Such directories are downloaded and shared, so a batch is never read with a plain `pickle.load`
(a pickle can name any function to call): `load_batch` admits only what the format holds, in the
spirit of `torch.load(weights_only=True)`, and refuses anything else before it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

from mhtrain import ConfigError, DataError, one_line_errors
from mhtrain.data.cifar100mh_info import FORMAT, INFO, DatasetInfo, read_info
from mhtrain.data.datamodule import TensorDataModule
from mhtrain.data.heads import Head

SPLITS = {"train": "train_batch", "test": "test_batch"}

_cache: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as pickle protocols 0-2 use it for bytes (text, "latin1"), and only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The only globals a batch may name: numpy's array reconstruction, as numpy 1 (`numpy.core`) and
# numpy 2 (`numpy._core`) write it; `_frombuffer` is how protocol 5 (Python 3.14's default) writes
# an array; bytes under protocols 0-2 (Python 3 writers). Dicts, lists, str and ints need no global.
# Each maps to an object bound here: nothing is imported by a name the file gives.
_ARRAY = {"_reconstruct": _reconstruct, "_frombuffer": _frombuffer}
ADMITTED = {
    **{(f"numpy.{core}.{mod}", name): _ARRAY[name] for core in ("core", "_core")
       for mod, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        what = f"{module}.{name}"
        # the name comes from the file: keep the message one short line whatever it holds
        self.what = what[:200] if all(p.isidentifier() for p in what.split(".")) else ascii(what[:200])
        super().__init__(self.what)


class BatchUnpickler(pickle.Unpickler):
    """An unpickler for batch files: any global outside ADMITTED is refused before it is called."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(str(module), str(name)) from None


def load_batch(path: Path) -> object:
    """Unpickle a CIFAR batch file someone else may have written; DataError for anything that is
    not one, naming what it asked to run when it names a global outside ADMITTED."""
    try:
        with open(path, "rb") as f:
            return BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"{path}: refused, this file is not a CIFAR-100 batch; it asks to run {e.what} "
                        "(nothing in it ran); delete it and get the dataset from a source you trust, "
                        "or rebuild it") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same: not a batch file
        raise DataError(f"{path} is not a CIFAR batch file ({type(e).__name__}); "
                        "rebuild the dataset") from None


def _expect(ok: bool, path: Path, field: str, value: object, expected: str) -> None:
    """One line naming the file and field, and the type found (never its possibly huge value)."""
    if not ok:
        kind = type(value).__name__ + (f" of {value.dtype}" if isinstance(value, np.ndarray) else "")
        raise DataError(f"{path}: {field} is {kind}, expected {expected}; rebuild the dataset")


def _decode(path: Path, records: list, info: DatasetInfo) -> dict[str, np.ndarray]:
    """Each sample's byte record -> one label per head. A record must be bytes: `bytes(10**13)`
    would allocate terabytes."""
    names, mappings = info.names, info.parameter_mappings
    labels = {name: np.full(len(records), -1, dtype=np.int64) for name in names.values()}
    for i, rec in enumerate(records):
        _expect(isinstance(rec, bytes | bytearray), path, f"labels[{i}]", rec, "a byte record")
        n = rec[0] if rec else 0
        if len(rec) != 1 + 2 * n:
            raise DataError(f"{path}: labels[{i}], a record of {len(rec)} bytes, does not match its "
                            f"n={n} pairs (expected {1 + 2 * n})")
        for j in range(n):
            pid, value = rec[1 + 2 * j], rec[2 + 2 * j]
            if pid not in names:
                raise DataError(f"{path}: labels[{i}]: parameter id {pid} is missing from parameter_names "
                                f"{sorted(names)}")
            bounds = mappings.get(names[pid])
            lo, hi = (0, 255) if bounds is None else (bounds.min, bounds.max)
            if not lo <= value <= hi:
                raise DataError(f"{path}: labels[{i}]: {names[pid]}={value} outside its mapped range "
                                f"[{lo}, {hi}]")
            labels[names[pid]][i] = value
    for name, values in labels.items():
        if (values < 0).any():
            raise DataError(f"{path}: labels[{int(np.argmax(values < 0))}] has no value for {name}")
    return labels


def read_split(root: str | os.PathLike, split: str,
               info: DatasetInfo | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(uint8 images N×C×H×W, head name -> labels) of one split, validated against the metadata."""
    info = info or read_info(root)
    path = Path(root) / SPLITS[split]
    if not path.is_file():
        raise DataError(f"{path} is missing; rebuild the dataset")
    batch = load_batch(path)
    if not isinstance(batch, dict) or not {"data", "labels"} <= set(batch):
        have = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} needs keys 'data' and 'labels' (has {have}); rebuild the dataset")
    data, records = batch["data"], batch["labels"]
    _expect(isinstance(data, np.ndarray) and data.dtype == np.uint8, path, "data", data, "a uint8 array")
    _expect(isinstance(records, list | tuple), path, "labels", records, "a list of byte records")
    data = np.require(data, requirements="W")  # a protocol-5 array is a read-only view of the pickle
    if len(data) != len(records):
        raise DataError(f"{path}: {len(data)} images but {len(records)} label records")
    c, h, w = info.shape
    if data.ndim != 2 or data.shape[1] != h * w * c:
        raise DataError(f"{path}: images of {data.shape[1:]} values do not match image_size "
                        f"{info.image_size} ({h * w * c} values)")
    images = torch.from_numpy(data.reshape(-1, h, w, c)).permute(0, 3, 1, 2).contiguous()
    labels = _decode(path, records, info)
    return images, {name: torch.from_numpy(v) for name, v in labels.items()}


def load_cached(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`read_split`, once per process per file version: heads and training share one read."""
    path = Path(root) / SPLITS[split]
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _cache:
        _cache[key] = read_split(root, split)
    return _cache[key]


def write(root: str | os.PathLike, splits: Mapping[str, tuple[torch.Tensor, dict[str, torch.Tensor]]],
          descriptions: Mapping[str, str] | None = None) -> Path:
    """Write a dataset: `splits` maps train/test to (uint8 N×C×H×W images, name -> labels)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    first_images, first_labels = next(iter(splits.values()))
    names = list(first_labels)
    mappings = {}
    for name in names:
        values = torch.cat([labels[name] for _, labels in splits.values()])
        mappings[name] = {"min": int(values.min()), "max": int(values.max()),
                          "description": (descriptions or {}).get(name, name)}
    _, c, h, w = first_images.shape
    for split, (images, labels) in splits.items():
        table = torch.stack([labels[name].to(torch.uint8) for name in names], dim=1)
        records = [bytes([len(names), *[b for i, v in enumerate(row) for b in (i, v)]])
                   for row in table.tolist()]
        data = images.permute(0, 2, 3, 1).reshape(len(images), -1).numpy()
        with open(root / SPLITS[split], "wb") as f:
            pickle.dump({"data": data, "labels": records}, f, protocol=4)
    info = {"format": FORMAT, "image_size": f"{h}x{w}x{c}",
            "parameter_names": {str(i): name for i, name in enumerate(names)},
            "parameter_mappings": mappings}
    (root / INFO).write_text(json.dumps(info, indent=2))
    return root


def classes(info: DatasetInfo, train_labels: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, int]:
    """Each head's class count: its mapped `max` + 1, else (no range in the metadata, as the format
    allows) its largest training label + 1; `validate` and training count alike."""
    return {name: (info.parameter_mappings[name].max if name in info.parameter_mappings
                   else int(train_labels()[name].max())) + 1 for name in info.names.values()}


class CIFAR100MHDataModule(TensorDataModule):
    """A CIFAR-100-MH dataset; its heads (names, class counts) come from the metadata.

    Heads set in the config must agree with the dataset's; a disagreement is rejected (naming
    both), since silently training other heads than the config says would mislead.
    """

    def __init__(self, root: str, **kwargs) -> None:
        super().__init__(data_dir=root, **kwargs)

    @classmethod
    def heads_from_config(cls, data: Mapping) -> dict[str, Head]:
        root = data.get("root") or data.get("data_dir")
        try:
            info = read_info(root)
        except DataError as e:
            raise ConfigError(str(e)) from None
        counts = classes(info, lambda: load_cached(root, "train")[1])
        heads = {name: Head(name, n, per_head=True) for name, n in counts.items()}
        declared = data.get("heads")
        if declared:
            want = {k: (v or {}).get("classes") for k, v in declared.items()}
            have = {k: h.classes for k, h in heads.items()}
            if want != have:
                raise ConfigError(f"data.heads {want} disagree with the dataset's metadata {have} in "
                                  f"{root}; set data.heads=null to take them from the dataset")
        return heads if data.get("multihead", True) else dict([next(iter(heads.items()))])

    @classmethod
    def shape_from_config(cls, data: Mapping) -> tuple[int, int, int]:
        try:
            return read_info(data.get("root") or data.get("data_dir")).shape
        except DataError as e:
            raise ConfigError(str(e)) from None

    def acquire(self) -> None:
        read_info(self.data_dir)

    def load(self, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return load_cached(self.data_dir, split)


SOURCES = {"mnist": "multihead_cnn_mnist", "cifar10": "multihead_cnn_cifar10"}


def build(source: str, out: str | os.PathLike, overrides: list[str] | None = None) -> Path:
    """Write any dataset the project loads, with its heads' labels, as CIFAR-100-MH."""
    from hydra.utils import instantiate

    from mhtrain.config import compose

    if source not in SOURCES:
        raise ConfigError(f"--from {source}: choose one of {', '.join(SOURCES)}")
    dm = instantiate(compose(SOURCES[source], overrides or []).data)
    dm.prepare_data()
    splits = {}
    for split in SPLITS:
        images, base = dm.load(split)
        splits[split] = (images, dm.head_labels(base))
    return write(out, splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mhtrain.data.cifar100mh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a CIFAR-100-MH dataset from a dataset the project loads")
    b.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES))
    b.add_argument("--out", required=True, help="directory to write")
    b.add_argument("overrides", nargs="*", help="Hydra overrides for the source, e.g. data.data_dir=…")
    v = sub.add_parser("validate", help="read and check a dataset; print its heads")
    v.add_argument("root")
    args = parser.parse_args(argv)

    def run() -> int:
        root = build(args.source, args.out, args.overrides) if args.command == "build" else Path(args.root)
        info = read_info(root)
        splits = {split: read_split(root, split, info) for split in SPLITS}
        counts = {split: len(images) for split, (images, _) in splits.items()}
        heads = classes(info, lambda: splits["train"][1])
        print(f"{root}: {FORMAT}, {info.image_size}, {counts}, heads {heads}")
        return 0

    return one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
