"""Files and URLs from someone else: a dataset directory runs none of its code, a storage URL
carries no password (libpq takes it from PGPASSWORD or a password file instead)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from hydra.utils import instantiate
from optuna.trial import TrialState

from mhtrain import ConfigError, DataError
from mhtrain.config import compose
from mhtrain.data import cifar100mh
from mhtrain.study import opening, records, study_config
from mhtrain.study.storage import load_existing, open_storage
from mhtrain.study.trials import OUTPUT_ROOT
from tests.conftest import ROOT, tiny_for
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


# --- A storage someone else wrote: its records are data, never code --------------------------

# a Hydra node that `instantiate` would run: it creates the file `{marker}`
PAYLOAD = ("{{_target_: builtins.int, _args_: [{{_target_: builtins.bool, _args_: "
           "[{{_target_: distutils.spawn.spawn, cmd: [touch, '{marker}']}}]}}]}}")
LR = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)


def planted(url: str, study: records.StudyConfig, marker: Path, elsewhere: Path) -> optuna.Study:
    """A study as `studies/lr.py` records it (so a resume accepts it), whose best trial's stored
    overrides carry a payload and whose stored trial folder lies outside the project's runs."""
    ostudy = optuna.create_study(study_name=study.name, storage=url, direction="maximize")
    ostudy.set_metric_names([study.metric])
    ostudy.set_user_attr("config", study.to_dict())
    ostudy.set_user_attr(OUTPUT_ROOT, str(elsewhere))
    overrides = [*study.overrides, "++model.optimizer.lr=0.01",
                 f"model.optimizer.weight_decay={PAYLOAD.format(marker=marker)}", "seed=0",
                 f"optimized_metric={study.metric}"]
    ostudy.add_trial(optuna.trial.create_trial(
        params={"model.optimizer.lr": 0.01}, distributions={"model.optimizer.lr": LR}, value=0.99,
        user_attrs={"experiment": study.experiment, "overrides": overrides, "seed": 0}))
    return ostudy


def one_error_line(capsys: pytest.CaptureFixture, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(n in err[0] for n in names), err[0]
    return err[0]


def test_a_hostile_storage_runs_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    """export, the final training of what it would write, compare, warm start and resume: each
    refuses in one line, exit 2, and neither the payload's file nor the planted folder appears."""
    from mhtrain.study import cli
    from mhtrain.study.__main__ import main as study_main
    from mhtrain.train import precheck

    monkeypatch.chdir(tmp_path)
    marker, elsewhere = tmp_path / "payload_ran", tmp_path / "elsewhere"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    name = f"lr_{uuid.uuid4().hex[:8]}"  # export writes conf/experiment/best_<name>.yaml
    tiny = [*tiny_for(tiny_data, epochs=1)]
    for study_name in (name, f"{name}_ref"):
        planted(url, study_config.load("lr", name=study_name, extra_overrides=tiny), marker, elsewhere)
    exported = ROOT / "conf" / "experiment" / f"best_{name}.yaml"
    compare = load_compare_cli()
    capsys.readouterr()
    run_lr = ["--storage", url, "--n-trials", "2", "--no-progress", *tiny]
    try:
        assert study_main(["export", name, "--storage", url]) == 2
        one_error_line(capsys, f"study {name}, trial 0", "model.optimizer.weight_decay")
        assert not exported.exists()
        assert precheck([f"experiment=best_{name}"]) == 2  # the final training has nothing to run
        one_error_line(capsys)
        assert compare.main(["--arms", name, "--reference", f"{name}_ref", "--storage", url]) == 2
        one_error_line(capsys, f"study {name}, trial 0", "model.optimizer.weight_decay")
        assert cli.main("lr", "", ["--study-name", "new", "--warm-start", name, *run_lr]) == 2
        one_error_line(capsys, f"study {name}, trial 0", "model.optimizer.weight_decay")
        assert cli.main("lr", "", ["--study-name", name, *run_lr]) == 2  # resume
        one_error_line(capsys, f"study {name}", "output_root", str(elsewhere))
    finally:
        exported.unlink(missing_ok=True)
    assert not marker.exists(), "a stored override ran code"
    assert not elsewhere.exists(), "a stored folder outside runs/ was written"
    assert not (tmp_path / "runs" / "studies").exists(), "a trial ran"


def load_compare_cli():
    """studies/compare.py as a module, so its main runs in this process."""
    spec = importlib.util.spec_from_file_location("compare_cli", ROOT / "studies" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def local_lr() -> records.StudyConfig:
    """conf/study/lr.yaml as it is, declared the config this process runs study `lr` with."""
    from mhtrain.study.local import trust

    study = study_config.load("lr")
    trust(study)
    return study


def in_memory(overrides: list[str], experiment: str = "multihead_cnn_mnist",
              fixed: tuple[str, ...] = ("model.loss_weights.digit=1.0",)) -> optuna.Study:
    """A study recording the `lr` search over `experiment` with `fixed`, and one trial that
    stored `overrides`."""
    ostudy = optuna.create_study(study_name="lr", direction="maximize")
    ostudy.set_user_attr("config", {"experiment": "multihead_cnn_mnist", "overrides": list(fixed),
                                    "search_space": {"model.optimizer.lr": {"type": "float"}}})
    ostudy.add_trial(optuna.trial.create_trial(
        params={"model.optimizer.lr": 0.01}, distributions={"model.optimizer.lr": LR}, value=0.9,
        user_attrs={"experiment": experiment, "overrides": overrides}))
    return ostudy


SEARCHED = ["model.loss_weights.digit=1.0", "++model.optimizer.lr=0.01", "seed=3",
            "optimized_metric=val/digit_acc"]


@pytest.mark.parametrize(("override", "named"), [
    *((f"++model.optimizer.lr={{_target_: {target}, _args_: [x]}}", "model.optimizer.lr (a nested node)")
      for target in ("distutils.spawn.spawn", "setuptools._distutils.spawn.spawn",
                     "mlflow.utils.process._exec_cmd", "pathlib.Path.write_text", "builtins.open")),
    ("model.optimizer._target_=builtins.exec", "model.optimizer._target_ (a package, sweep or instantiate"),
    ("""++model.optimizer.lr='${oc.decode:"{_target_: os.system}"}'""",
     "model.optimizer.lr (an interpolation"),
    ("++model.optimizer.lr=[1, 2]", "model.optimizer.lr (a list)"),
    ("++model.optimizer.lr=1,2", "model.optimizer.lr (a package, sweep"),
    ("model.dropout=0.5", "model.dropout (neither searched nor fixed"),
    ("hydra.run.dir=/x", "hydra.run.dir (it decides how Hydra runs the job)"),
    ("paths.output_dir=/x", "paths.output_dir (neither searched nor fixed"),
])
def test_a_stored_override_is_a_searched_or_fixed_key_with_a_scalar(override, named, local_lr, capsys):
    from mhtrain.study.untrusted import trial_record

    ostudy = in_memory([*SEARCHED, override])
    with pytest.raises(ConfigError, match=rf"^study lr, trial 0: {re.escape(named)}.* refused; "):
        trial_record(ostudy, ostudy.best_trial)
    good = in_memory(SEARCHED)  # what a study run records passes; the local config is what re-runs
    assert trial_record(good, good.best_trial) == ("multihead_cnn_mnist", SEARCHED[1:])


@pytest.mark.parametrize(("experiment", "fixed"), [
    ("multihead_cnn_mnist\n  - override /model: evil", ()),  # a YAML line in export's defaults
    ("cnn_mnist", ()),  # not the study's experiment
    ("multihead_cnn_mnist", ("data=../../elsewhere",)),  # a group choice that is a path
])
def test_the_experiment_and_group_choices_are_the_projects_own_configs(experiment, fixed, local_lr):
    from mhtrain.study.untrusted import trial_record

    ostudy = in_memory([*fixed, *SEARCHED[1:]], experiment, fixed)
    with pytest.raises(ConfigError, match="refused"):
        trial_record(ostudy, ostudy.best_trial)


def test_resume_refuses_enqueued_values_and_folders_that_are_not_the_projects(tiny, tmp_path, monkeypatch):
    from mhtrain.study.checkpoints import ARTIFACT_DIR, hand_over
    from mhtrain.study.untrusted import check_resume

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = study_config.load("lr", extra_overrides=tiny)
    ostudy = opening.open_study(study, url)
    check_resume(ostudy, study, url)  # what the project itself records passes
    for n, (key, value, why) in enumerate([
            ("model.optimizer.lr", {"_target_": "os.system", "_args_": ["x"]}, " (a nested node"),
            ("model.optimizer.lr", "${oc.decode:x}", " (an interpolation"),
            ("model.optimizer.lr", -0.5, "=-0.5 (outside [0.0001, 0.1]: the local search space"),
            ("model.optimizer.lr", "0.01", "='0.01' (not a number"),
            ("model.dropout", 0.1, "' (not in the search space")]):
        ostudy.enqueue_trial({key: value})
        with pytest.raises(ConfigError, match=rf"^study lr, trial {n}: .*{key}{re.escape(why)}.* refused; "):
            check_resume(ostudy, study, url)
        ostudy._storage.set_trial_state_values(ostudy.get_trials()[n]._trial_id, TrialState.FAIL)
    for attr, place in ((OUTPUT_ROOT, "runs/../.."), (ARTIFACT_DIR, "/etc")):
        ostudy.set_user_attr(attr, place)
        fresh = optuna.load_study(study_name="lr", storage=url)  # a folder is read once per opened study
        with pytest.raises(ConfigError, match=rf"study lr: {attr} '{re.escape(place)}' refused \(not inside"):
            check_resume(fresh, study, url)
        ostudy.set_user_attr(attr, str(tmp_path / "runs" / "x"))
    ostudy.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"checkpoint": "../../shared.db"}))
    with pytest.raises(ConfigError, match=r"trial 5: stored checkpoint = '../../shared.db' refused"):
        hand_over(ostudy, ostudy.get_trials()[5], tmp_path / "out.ckpt", url)


def test_a_tampered_checkpoint_is_refused_in_one_line(tiny_data, tmp_path, capsys):
    """What `export` hands over and `ckpt_path=` goes on from is loaded as tensors only: a
    checkpoint whose pickle asks for os.system is one line, exit 2, before anything is built."""
    from mhtrain.train import fit, precheck

    bad, marker = tmp_path / "shared.ckpt", tmp_path / "marker"
    torch.save({"state_dict": {}, "epoch": RunsCode(marker, "os.system")}, bad)
    args = [*tiny_for(tiny_data, epochs=1), f"paths.output_dir={tmp_path / 'run'}", f"ckpt_path={bad}"]
    assert precheck(["experiment=multihead_cnn_mnist", *args]) == 2  # `python -m mhtrain.train`'s first step
    line = one_error_line(capsys, str(bad), "refused", f"it asks to run {REFUSED['os.system']}")
    assert "weights_only" not in line  # torch's advice to load it unrestricted is not passed on
    cfg = compose("multihead_cnn_mnist", args[:-1])
    cfg.ckpt_path = str(bad)
    with pytest.raises(DataError, match="refused, not a checkpoint of plain tensors"):
        fit(cfg)
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("field", "value", "named"), [
    ("labels", 10**13, "labels[0] is int, expected a byte record"),  # bytes(10**13): MemoryError
    ("labels", "abc", "labels[0] is str, expected a byte record"),  # bytes("abc"): TypeError
    ("data", "x" * 600, "data is str, expected a uint8 array"),  # np.require("x…", uint8): ValueError
    ("data", [[0] * 12] * 2, "data is list, expected a uint8 array"),
])
def test_a_malformed_record_is_one_line_naming_the_file_and_field(built, tmp_path, capsys, field, value,
                                                                  named):
    bad = tmp_path / "malformed"
    shutil.copytree(built, bad)
    with open(bad / "train_batch", "rb") as f:
        batch = pickle.load(f)  # the builder's own file, just written
    if field == "labels":
        batch["labels"][0] = value
    else:
        batch["data"] = value
    with open(bad / "train_batch", "wb") as f:
        pickle.dump(batch, f, protocol=4)
    assert cifar100mh.main(["validate", str(bad)]) == 2
    one_error_line(capsys, f"{bad / 'train_batch'}: {named}")


def test_a_summary_of_trials_planted_without_their_folder_still_prints():
    from mhtrain import tracking

    (line,) = tracking.curves([({"mlflow": "http://127.0.0.1:1"}, None)])  # no output_dir beside it
    assert line.startswith("curves: MLflow experiment")


@pytest.mark.parametrize("planted", [["pbt", True], "rm -rf /", 7])
def test_a_recorded_config_that_is_not_a_mapping_is_refused_in_one_line(planted, local_lr):
    """What re-runs a study's answer (confirm, compare) reads its recorded config as data."""
    from mhtrain.study.replay import is_pbt, retrain_config

    ostudy = in_memory(SEARCHED)
    ostudy.set_user_attr("config", planted)
    for reader in (lambda: is_pbt(ostudy),
                   lambda: retrain_config(ostudy, ostudy.best_trial, 1, "runs/x", [])):
        with pytest.raises(ConfigError, match=r"^study lr: stored config = .* refused \(Input should be"):
            reader()


# --- The allow-list is this side's: the local study config and what the user typed ---------------


class Listener:
    """A loopback TCP listener that counts the connections it is offered (and answers none):
    planted as an address in a storage, it tells whether anything opened that address."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port, self.connections, self._stop = self.sock.getsockname()[1], 0, threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> int:
        """Stop listening; the number of connections it was offered."""
        self._stop.set()
        self.thread.join()
        self.sock.close()
        return self.connections


@pytest.fixture
def listener():
    heard = Listener()
    yield heard
    heard.close()


def real_trials(tiny_data: Path, root: Path, name: str = "lr") -> tuple[dict, list]:
    """One real lr study of two one-epoch trials: its study attributes and trials, to copy."""
    from mhtrain.study import runner

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        study = study_config.load("lr", name=name, n_trials=2, extra_overrides=tiny_for(tiny_data, epochs=1))
        ostudy, _ = runner.run(study, f"sqlite:///{root / 'real.db'}", progress=False)
    return dict(ostudy.user_attrs), ostudy.get_trials()


def copied(url: str, name: str, attrs: dict, trials: list, **changes) -> optuna.Study:
    """A study made with Optuna's public API from `attrs` and `trials`, the trials' user attributes
    updated by `changes` (attribute -> value, or a function of the old value)."""
    ostudy = optuna.create_study(study_name=name, storage=url, direction="maximize")
    ostudy.set_metric_names(["val/digit_acc"])
    for key, value in attrs.items():
        ostudy.set_user_attr(key, value)
    for t in trials:
        user = dict(t.user_attrs)
        for key, change in changes.items():
            user[key] = change(user.get(key)) if callable(change) else change
        ostudy.add_trial(optuna.trial.create_trial(
            state=t.state, value=t.value, params=t.params, distributions=t.distributions, user_attrs=user,
            intermediate_values=t.intermediate_values))
    return ostudy


@pytest.fixture(scope="module")
def real(tiny_data, tmp_path_factory) -> tuple[dict, list]:
    return real_trials(tiny_data, tmp_path_factory.mktemp("real"))


def plant_fixed(url: str, name: str, real: tuple[dict, list], listener: Listener,
                tmp_path: Path) -> list[Path]:
    """Studies `name` and `name_ref` whose recorded config and trials fix a tracking server (the
    listener), a checkpoint folder and a data folder; returns those folders."""
    elsewhere, data_elsewhere = tmp_path / "elsewhere", tmp_path / "data_elsewhere"
    planted = ["logger=mlflow", f"logger.mlflow.tracking_uri={listener.url}",
               f"++callbacks.model_checkpoint.dirpath={elsewhere}", f"data.data_dir={data_elsewhere}"]
    attrs, trials = real
    config = {**attrs["config"], "name": name, "overrides": [*attrs["config"]["overrides"], *planted]}
    for study_name in (name, f"{name}_ref"):
        copied(url, study_name, {**attrs, "config": config}, trials,
               overrides=lambda old: [*old[:-3], *planted, *old[-3:]])
    return [elsewhere, data_elsewhere]


def test_a_storage_cannot_make_a_key_searched(real, tiny_data, tmp_path, monkeypatch, capsys, listener):
    """A study whose recorded config and trials fix a tracking server, a checkpoint folder and a
    data folder of their choosing: export writes the local config's keys only, with the fixed
    overrides the user typed, says in one line what it left out, and opens nothing."""
    from mhtrain.study.__main__ import main as study_main

    monkeypatch.chdir(tmp_path)
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", f"lr_{uuid.uuid4().hex[:8]}"
    folders = plant_fixed(url, name, real, listener, tmp_path)
    exported = ROOT / "conf" / "experiment" / f"best_{name}.yaml"
    capsys.readouterr()
    try:
        assert study_main(["export", name, "--config", "lr", "--storage", url, *tiny_for(tiny_data, 1)]) == 0
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"warning: study {name}: its stored config differs from the local one")
        assert "fixed overrides not set here: 'logger=mlflow'" in line and "the local one is used" in line
        text = exported.read_text()
        assert "mlflow" not in text and "dirpath" not in text and "elsewhere" not in text
        assert f"data_dir: {tiny_data}" in text  # what the user typed
        cfg = compose(f"best_{name}")
        assert "mlflow" not in (cfg.get("logger") or {}) and cfg.data.data_dir == str(tiny_data)
    finally:
        exported.unlink(missing_ok=True)
    assert listener.close() == 0, "a stored address was opened"
    assert not any(f.exists() for f in folders), "a stored folder was written"


@pytest.mark.slow
def test_compare_trains_only_the_local_config_of_a_planted_study(real, tiny_data, tmp_path, monkeypatch,
                                                                capsys, listener):
    """The same planted studies compared: the re-runs train the local config with what the user
    typed; no request reaches the planted server, no checkpoint lands in the planted folder."""
    from mhtrain.study.local import trust

    monkeypatch.chdir(tmp_path)
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", f"lr_{uuid.uuid4().hex[:8]}"
    folders = plant_fixed(url, name, real, listener, tmp_path)
    for study_name in (name, f"{name}_ref"):  # the study config each arm's own command ran with
        trust(study_config.load("lr", name=study_name, extra_overrides=tiny_for(tiny_data, 1)))
    assert load_compare_cli().main(["--arms", name, "--reference", f"{name}_ref", "--storage", url,
                                    "--seeds", "2", "data.train_subset=64"]) == 0
    assert "error" not in capsys.readouterr().err
    assert listener.close() == 0, "a stored address was opened"
    assert not any(f.exists() for f in folders), "a stored folder was written"


def test_a_stored_value_outside_the_local_space_is_refused(real, tmp_path, monkeypatch, capsys):
    """The storage's own search space reaches lr 0.5; conf/study/lr.yaml stops at 0.1: export
    refuses the trial in one line naming it, the key and the bound, and writes nothing."""
    from mhtrain.study.__main__ import main as study_main

    monkeypatch.chdir(tmp_path)
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", f"lr_{uuid.uuid4().hex[:8]}"
    attrs, trials = real
    wide = {"model.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    ostudy = optuna.create_study(study_name=name, storage=url, direction="maximize")
    ostudy.set_user_attr("config", {**attrs["config"], "search_space": wide})
    t = trials[0]
    overrides = [o if not o.startswith("++model.optimizer.lr=") else "++model.optimizer.lr=0.5"
                 for o in t.user_attrs["overrides"]]
    ostudy.add_trial(optuna.trial.create_trial(value=0.99, params={"model.optimizer.lr": 0.5},
                                               distributions={"model.optimizer.lr": lr},
                                               user_attrs={**t.user_attrs, "overrides": overrides}))
    capsys.readouterr()
    assert study_main(["export", name, "--config", "lr", "--storage", url]) == 2
    line = one_error_line(capsys, f"study {name}, trial 0", "model.optimizer.lr=0.5",
                          "outside [0.0001, 0.1]")
    assert "conf/study/lr.yaml" in line
    assert not (ROOT / "conf" / "experiment" / f"best_{name}.yaml").exists()


def test_the_reaper_opens_no_address_a_trial_stored(tmp_path, monkeypatch, listener):
    """A RUNNING trial whose worker is gone, planted with an MLflow server address and with an
    unrelated SQLite file as its store: the reaper fails and re-runs it, and opens neither."""
    import sqlite3

    from mhtrain import tracking
    from mhtrain.study.ledger import owner, reap

    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    unrelated = tmp_path / "accounts.db"
    with sqlite3.connect(unrelated) as db:
        db.execute("CREATE TABLE accounts (name TEXT)")
    tables = lambda: sqlite3.connect(unrelated).execute("SELECT name FROM sqlite_master").fetchall()  # noqa: E731
    before = tables()
    ostudy = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    gone = {**owner(), "started": "1"}  # this host, a pid whose start time is not this process's
    for uri in (listener.url, f"sqlite:///{unrelated}"):
        trial = ostudy.ask()
        trial.set_user_attr("owner", gone)
        trial.set_user_attr(tracking.TRACKING, {"mlflow": uri})
        trial.set_user_attr("output_dir", str(tmp_path / "runs" / "studies" / "lr-0a1b2c3d" / "trial_0000"))
    assert reap(ostudy) == [0, 1]
    assert listener.close() == 0, "the reaper opened a stored address"
    assert tables() == before, "MLflow wrote into a file a trial named"


def pbt_record(tmp_path: Path, schedule: list[dict]) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """A PBT study named after conf/study/pbt_loss_weights.yaml, one member with `schedule`."""
    from mhtrain.pbt import SCHEDULE
    from mhtrain.study.local import trust

    study = study_config.load("pbt_loss_weights", extra_overrides=["trainer.max_epochs=4"])
    trust(study)
    lr, thick = "model.optimizer.lr", "model.loss_weights.thickness"
    ostudy = optuna.create_study(study_name="pbt_loss_weights", direction="maximize")
    ostudy.set_user_attr("config", study.to_dict())
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    start = [{"epoch": 0, "parent": None, lr: 1e-3, thick: 1.0}]
    for number in range(2):
        ostudy.add_trial(optuna.trial.create_trial(
            params={lr: 1e-3}, distributions={lr: dist}, value=0.5 + number / 10,
            user_attrs={SCHEDULE: schedule if number else start,
                        "experiment": study.experiment,
                        "overrides": [*study.overrides, f"++{lr}=0.001", f"seed={number}",
                                      f"optimized_metric={study.metric}"]}))
    return ostudy, ostudy.trials[1]


LR_, THICK_ = "model.optimizer.lr", "model.loss_weights.thickness"


@pytest.mark.parametrize(("second", "named"), [
    ({"epoch": 2, "parent": 0, "parent_epoch": 2, LR_: -0.5, THICK_: 1.0},
     "model.optimizer.lr=-0.5 (outside"),
    ({"epoch": 2, "parent": 0, "parent_epoch": 2, LR_: 1e-3, THICK_: 7.0},
     "model.loss_weights.thickness=7.0 (outside [0, 2]"),
    ({"epoch": 10**12, "parent": 0, "parent_epoch": 2, LR_: 1e-3, THICK_: 1.0}, "pbt_schedule.1.epoch"),
    ({"epoch": 9, "parent": 0, "parent_epoch": 2, LR_: 1e-3, THICK_: 1.0},
     "epoch=9 (past the 4 epochs the local trainer runs)"),
    ({"epoch": 2, "parent": 0, "parent_epoch": 50, LR_: 1e-3, THICK_: 1.0}, "parent_epoch=50 (past the 4"),
])
def test_a_replayed_schedule_obeys_the_local_space_and_trainer(tmp_path, second, named):
    """What export and compare retrain from a PBT lineage: its values inside the local search space,
    its epochs (a copy's, a batch order's skip) within the epochs the local trainer runs."""
    from mhtrain.study.replay import lineage

    ostudy, member = pbt_record(tmp_path, [{"epoch": 0, "parent": None, LR_: 1e-3, THICK_: 1.0}, second])
    with pytest.raises(ConfigError, match=re.escape(named)) as e:
        lineage(ostudy, member)
    assert "\n" not in str(e.value) and "study pbt_loss_weights, trial 1" in str(e.value)


def test_a_stored_folder_is_read_once_and_used_as_read(tiny, tmp_path, monkeypatch):
    """Another process changes the study's folders mid-run (to folders inside runs/ that pass the
    check): this process's later trials still write where it first read, and keep checkpoints there."""
    from mhtrain.study import folders
    from mhtrain.study.checkpoints import ARTIFACT_DIR, remember_store
    from mhtrain.study.trials import trial_config
    from mhtrain.study.untrusted import check_resume

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = study_config.load("lr", extra_overrides=tiny)
    ostudy = opening.open_study(study, url)
    check_resume(ostudy, study, url)
    store = remember_store(ostudy, url)
    first = Path(ostudy.user_attrs[OUTPUT_ROOT]).resolve()
    other = optuna.load_study(study_name="lr", storage=url)  # the other process's handle
    other.set_user_attr(OUTPUT_ROOT, str(tmp_path / "runs" / "studies" / "someone-elses"))
    other.set_user_attr(ARTIFACT_DIR, str(tmp_path / "runs" / "someone-elses-artifacts"))
    cfg = trial_config(study, ostudy.ask())
    assert Path(cfg.paths.output_dir).parent == first
    assert folders.stored_folder(ostudy, ARTIFACT_DIR) == store.resolve()
