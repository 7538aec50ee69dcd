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
import subprocess
import sys
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
from mhtrain.study import space
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


def planted(url: str, study: space.StudyConfig, marker: Path, elsewhere: Path) -> optuna.Study:
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
        planted(url, space.load("lr", name=study_name, extra_overrides=tiny), marker, elsewhere)
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
def test_a_stored_override_is_a_searched_or_fixed_key_with_a_scalar(override, named):
    from mhtrain.study.untrusted import trial_record

    ostudy = in_memory([*SEARCHED, override])
    with pytest.raises(ConfigError, match=rf"^study lr, trial 0: {re.escape(named)}.* refused; "):
        trial_record(ostudy, ostudy.best_trial)
    good = in_memory(SEARCHED)  # what a study run records passes
    assert trial_record(good, good.best_trial) == ("multihead_cnn_mnist", SEARCHED)


@pytest.mark.parametrize(("experiment", "fixed"), [
    ("multihead_cnn_mnist\n  - override /model: evil", ()),  # a YAML line in export's defaults
    ("cnn_mnist", ()),  # not the study's experiment
    ("multihead_cnn_mnist", ("data=../../elsewhere",)),  # a group choice that is a path
])
def test_the_experiment_and_group_choices_are_the_projects_own_configs(experiment, fixed):
    from mhtrain.study.untrusted import trial_record

    ostudy = in_memory([*fixed, *SEARCHED[1:]], experiment, fixed)
    with pytest.raises(ConfigError, match="refused"):
        trial_record(ostudy, ostudy.best_trial)


def test_resume_refuses_enqueued_values_and_folders_that_are_not_the_projects(tiny, tmp_path, monkeypatch):
    from mhtrain.study import runner
    from mhtrain.study.checkpoints import ARTIFACT_DIR, hand_over
    from mhtrain.study.untrusted import check_resume

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = space.load("lr", extra_overrides=tiny)
    ostudy = runner.open_study(study, url)
    check_resume(ostudy, study, url)  # what the project itself records passes
    for n, (key, value, why) in enumerate([
            ("model.optimizer.lr", {"_target_": "os.system", "_args_": ["x"]}, "a nested node"),
            ("model.optimizer.lr", "${oc.decode:x}", "an interpolation"),
            ("model.dropout", 0.1, "not in the search space")]):
        ostudy.enqueue_trial({key: value})
        with pytest.raises(ConfigError, match=rf"^study lr, trial {n}: .*{key}'? \({why}.* refused; "):
            check_resume(ostudy, study, url)
        ostudy._storage.set_trial_state_values(ostudy.get_trials()[n]._trial_id, TrialState.FAIL)
    for attr, place in ((OUTPUT_ROOT, "runs/../.."), (ARTIFACT_DIR, "/etc")):
        ostudy.set_user_attr(attr, place)
        with pytest.raises(ConfigError, match=rf"study lr: {attr} '{re.escape(place)}' \(not inside"):
            check_resume(ostudy, study, url)
        ostudy.set_user_attr(attr, str(tmp_path / "runs" / "x"))
    ostudy.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"checkpoint": "../../shared.db"}))
    with pytest.raises(ConfigError, match=r"trial 3: checkpoint id '../../shared.db' refused"):
        hand_over(ostudy, ostudy.get_trials()[3], tmp_path / "out.ckpt", url)


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


def test_a_reaped_trials_stored_mlflow_uri_never_creates_a_store(tmp_path):
    """The reaper ends a dead trial's MLflow run where the trial says it logged; a planted URI
    would make MLflow create a database (or folders) there."""
    from mhtrain import tracking
    from mhtrain.study.storage import open_storage

    planted = tmp_path / "elsewhere.db"
    ostudy = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trial = ostudy.ask()
    trial.set_user_attr(tracking.TRACKING, {"mlflow": f"sqlite:///{planted}"})
    trial.set_user_attr("output_dir", str(tmp_path / "lr-0a1b2c3d" / "trial_0000"))
    tracking.end_abandoned(ostudy.trials[0])
    assert not planted.exists()


def test_a_summary_of_trials_planted_without_their_folder_still_prints(tmp_path):
    from mhtrain import tracking
    from mhtrain.study.storage import open_storage

    ostudy = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trial = ostudy.ask()
    trial.set_user_attr(tracking.TRACKING, {"mlflow": "http://127.0.0.1:1"})  # no output_dir beside it
    (line,) = tracking.curves(ostudy.trials)
    assert line.startswith("curves: MLflow experiment")


@pytest.mark.parametrize("planted", [["pbt", True], "rm -rf /", 7])
def test_a_recorded_config_that_is_not_a_mapping_is_refused_in_one_line(planted):
    """What re-runs a study's answer (confirm, compare) reads its recorded config as data."""
    from mhtrain.study.replay import is_pbt, retrain_config

    ostudy = in_memory(SEARCHED)
    ostudy.set_user_attr("config", planted)
    assert not is_pbt(ostudy)
    with pytest.raises(ConfigError, match=r"^study lr, trial 0: study \(no recorded study config"):
        retrain_config(ostudy, ostudy.best_trial, 1, "runs/x", [])
