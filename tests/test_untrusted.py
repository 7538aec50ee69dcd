"""Files and URLs from someone else: a dataset directory runs none of its code, a storage URL
carries no password (libpq takes it from PGPASSWORD or a password file instead)."""

from __future__ import annotations

import os
import pathlib
import pickle
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from hydra.utils import instantiate

from mhtrain import DataError
from mhtrain.config import compose
from mhtrain.data import cifar100mh
from mhtrain.study.storage import load_existing, open_storage
from tests.conftest import ROOT
from tests.test_datasets import write_cifar10


class RunsCode:
    """Unpickled by a plain `pickle.load`, this calls `how` and creates `marker`."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {shlex.quote(str(self.marker))}",)
        return pathlib.Path.touch, (self.marker,)


REFUSED = {"os.system": f"{os.system.__module__}.system", "Path.touch": "pathlib.Path.touch"}


@pytest.fixture(scope="module")
def built(tiny_data, tmp_path_factory) -> Path:
    """A CIFAR-100-MH directory made by the project's own builder, as tests/test_bad_input.py does."""
    root = tmp_path_factory.mktemp("untrusted") / "c100"
    assert cifar100mh.main(["build", "--from", "mnist", "--out", str(root), f"data.data_dir={tiny_data}",
                            "data.verify=false", "data.val_size=100"]) == 0
    return root


def trojan(built: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A copy of `built` whose train_batch is the real one with a payload as one label record,
    and the marker file that payload would create."""
    bad, marker = tmp_path / "shared_by_someone", tmp_path / "marker"
    shutil.copytree(built, bad)
    with open(bad / "train_batch", "rb") as f:
        batch = pickle.load(f)  # the builder's own file, just written
    batch["labels"][0] = RunsCode(marker, how)
    with open(bad / "train_batch", "wb") as f:
        pickle.dump(batch, f, protocol=4)
    return bad, marker


@pytest.mark.parametrize("how", ["os.system", "Path.touch"])
def test_validate_refuses_a_batch_that_would_run_code(built, tmp_path, how):
    bad, marker = trojan(built, tmp_path, how)
    with open(bad / "train_batch", "rb") as f:  # the payload is real: a plain load runs it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    proc = subprocess.run([sys.executable, "-m", "mhtrain.data.cifar100mh", "validate", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the dataset's pickle ran code"
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert f"not a CIFAR-100 batch; it asks to run {REFUSED[how]}" in lines[0]
    assert str(bad / "train_batch") in lines[0] and proc.stdout == ""


def test_loading_or_training_refuses_it_in_process(built, tmp_path):
    bad, marker = trojan(built, tmp_path, "os.system")
    with pytest.raises(DataError, match=r"train_batch: refused, .* asks to run \w+\.system"):
        cifar100mh.read_split(bad, "train")
    dm = instantiate(compose("multihead_cnn_cifar100mh", [f"data.root={bad}"]).data)
    with pytest.raises(DataError, match="asks to run"):
        dm.setup("fit")
    assert cifar100mh.main(["validate", str(bad)]) == 2
    assert not marker.exists(), "the dataset's pickle ran code"


def test_the_legit_directory_still_loads(built, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mhtrain.data.cifar100mh", "validate", str(built)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "heads {'digit': 10, 'thickness': 5, 'smoothness': 3}" in proc.stdout
    images, labels = cifar100mh.read_split(built, "train")
    # the same batch written by another Python: every pickle protocol, numpy 1 module names
    with open(built / "train_batch", "rb") as f:
        batch = pickle.load(f)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = tmp_path / f"p{protocol}"
        shutil.copytree(built, copy)
        raw = pickle.dumps(batch, protocol=protocol)
        if protocol == 2:
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (copy / "train_batch").write_bytes(raw)
        got_images, got_labels = cifar100mh.read_split(copy, "train")
        assert torch.equal(got_images, images)
        assert all(torch.equal(got_labels[k], v) for k, v in labels.items())


def test_unchecked_cifar10_batches_run_no_code(tmp_path):
    """data.verify=false reads CIFAR-10 files that are not the official ones: restricted too."""
    root, marker = write_cifar10(tmp_path / "cifar"), tmp_path / "marker"
    cfg = compose("multihead_cnn_cifar10", [f"data.data_dir={root}", "data.verify=false"])
    assert len(instantiate(cfg.data).load("train")[0]) == 5 * 40  # the legit files load
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": RunsCode(marker, "os.system"), "labels": []}, f)
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)  # another directory: the module caches what it read
    cfg = compose("multihead_cnn_cifar10", [f"data.data_dir={bad}", "data.verify=false"])
    with pytest.raises(DataError, match=r"data_batch_3: refused, .* asks to run \w+\.system"):
        instantiate(cfg.data).load("train")
    assert not marker.exists(), "the dataset's pickle ran code"


POSTGRES = os.environ.get("MHTRAIN_TEST_POSTGRES")


def _pgpass_field(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="set MHTRAIN_TEST_POSTGRES (.ci/run starts a server)")
@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE"])
def test_postgres_url_without_a_password(source, tmp_path, monkeypatch):
    """The README's many-machines form: the URL names no password; libpq reads it from the
    environment or from a password file (here: any password under CI's trust auth, the real one
    where MHTRAIN_TEST_POSTGRES carries it)."""
    from sqlalchemy.engine import make_url

    given = make_url(POSTGRES)
    url = given.set(password=None).render_as_string(hide_password=False)
    assert given.password is None or given.password not in url
    secret = given.password or f"unused-under-trust-{uuid.uuid4().hex[:6]}"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", secret)
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    else:
        pgpass = tmp_path / "pgpass"
        fields = (given.host or "localhost", given.port or 5432, given.database, given.username, secret)
        pgpass.write_text(":".join(_pgpass_field(v) for v in fields) + "\n")
        pgpass.chmod(0o600)  # libpq ignores a password file others can read
        monkeypatch.setenv("PGPASSFILE", str(pgpass))

    name = f"u_{uuid.uuid4().hex[:8]}"  # the server is shared by the tests
    storage = open_storage(url)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    try:
        study = load_existing(name, url)
        study.enqueue_trial({"x": 1.0})
        study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
        assert load_existing(name, url).best_value == 1.0
        conn = storage.engine.raw_connection()
        try:  # the password libpq holds for the connection came from PGPASSWORD / the file
            assert conn.driver_connection.info.password == secret
        finally:
            conn.close()
    finally:
        optuna.delete_study(study_name=name, storage=storage)
