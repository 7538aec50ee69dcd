import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.study import opening, records, runner, study_config, workers
from mhtrain.study.export import export
from mhtrain.study.params import parse_param
from mhtrain.study.storage import open_storage
from mhtrain.study.trials import OUTPUT_ROOT, SEARCH_MODE, trial_config
from mhtrain.train import fit
from tests.conftest import ROOT


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def load(config: str, tiny: list[str], *extra: str, **changes) -> records.StudyConfig:
    return study_config.load(config, extra_overrides=[*tiny, *extra], **changes)


# an lr study whose space reaches a hopeless 1e-7: an enqueued value is used only inside it
WIDE_LR = {"model.optimizer.lr": {"type": "float", "low": 1e-8, "high": 1e-1, "log": True}}


def test_objective_on_tiny_trials(tiny, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    study = load("loss_weights", tiny, n_trials=2)
    ostudy, _ = runner.run(study, storage, progress=False)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert ostudy.metric_names == ["val/digit_acc"]
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))  # trained
        assert t.value == max(t.intermediate_values.values())
        assert set(t.params) == {"model.optimizer.lr", "model.loss_weights.thickness",
                                 "model.loss_weights.smoothness"}
        attrs = t.user_attrs
        assert attrs["experiment"] == "multihead_cnn_mnist"
        assert attrs["seed"] == study.seed + t.number
        assert f"seed={attrs['seed']}" in attrs["overrides"]
        assert {"best_val/digit_acc", "best_val/thickness_acc", "best_val/smoothness_acc",
                "epochs", "seconds", "params"} <= set(attrs)
        assert attrs["params"] == 422_866
    assert ostudy.user_attrs["config"]["search_space"]["model.optimizer.lr"]["log"] is True


def test_hopeless_trials_are_pruned(tiny, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    study = load("lr", tiny, "trainer.max_epochs=4", "callbacks.early_stopping=null", n_trials=5,
                 pruner={"name": "median", "n_startup_trials": 3, "n_warmup_steps": 0}, search_space=WIDE_LR)
    ostudy = opening.open_study(study, storage)
    for lr in (3e-3, 3e-3, 3e-3, 1e-7, 1e-7):
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    runner.run(study, storage, progress=False)
    trials = ostudy.get_trials()
    assert len(trials) == 5
    good, hopeless = trials[:3], trials[3:]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["epochs"] == 4 for t in good)
    for t in hopeless:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["epochs"] < 4
        assert len(t.intermediate_values) == t.user_attrs["epochs"]


def test_successive_halving_judges_a_trial_after_its_first_epoch(tiny, storage, monkeypatch, tmp_path):
    """The pruner's resources are epochs trained: `min_resource: 1` (the shipped default) stops a
    hopeless trial after one epoch, as bench/pruning.py measured it (it once took two)."""
    monkeypatch.chdir(tmp_path)
    study = load("lr", tiny, "trainer.max_epochs=4", "callbacks.early_stopping=null", n_trials=2,
                 pruner={"name": "sha", "min_resource": 1, "reduction_factor": 4}, search_space=WIDE_LR)
    ostudy = opening.open_study(study, storage)
    for lr in (3e-3, 1e-7):
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    runner.run(study, storage, progress=False)
    good, hopeless = ostudy.get_trials()
    assert good.state == TrialState.COMPLETE and good.user_attrs["epochs"] == 4
    assert hopeless.state == TrialState.PRUNED and hopeless.user_attrs["epochs"] == 1
    assert hopeless.intermediate_values.keys() == {1}


def test_budget_is_the_total_and_a_rerun_resumes(tiny, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    runner.run(load("lr", tiny, "trainer.max_epochs=1", n_trials=2), storage, progress=False)
    ostudy, _ = runner.run(load("lr", tiny, "trainer.max_epochs=1", n_trials=4), storage, progress=False)
    assert len(ostudy.get_trials()) == 4
    assert len({t.params["model.optimizer.lr"] for t in ostudy.get_trials()}) == 4  # no repeats
    ostudy, _ = runner.run(load("lr", tiny, "trainer.max_epochs=1", n_trials=4), storage, progress=False)
    assert len(ostudy.get_trials()) == 4


STUDY_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "study").glob("*.yaml")
                       if not p.stem.startswith("zz_test"))
# a PBT study exports its best member's lineage as a replay (tests/test_pbt.py)
EXPORTED = [c for c in STUDY_CONFIGS if not c.startswith("pbt_")]


@pytest.mark.parametrize("config", [c if c == "lr" else pytest.param(c, marks=pytest.mark.slow)
                                    for c in EXPORTED])
def test_export_reproduces_the_best_trial_of_every_shipped_study(config, tiny, tiny_data, storage,
                                                                 monkeypatch, tmp_path):
    """The exported experiment trains exactly the best trial: group choices (data=…) included."""
    monkeypatch.chdir(tmp_path)
    extra = ["trainer.max_epochs=1"]
    if "cifar100mh" in config:
        from mhtrain.data import cifar100mh

        root = tmp_path / "c100"
        assert cifar100mh.main(["build", "--from", "mnist", "--out", str(root), *tiny[:3]]) == 0
        extra += [f"data.root={root}", "data.val_size=100"]
        tiny = []
    name = f"export_{config}"
    ostudy, _ = runner.run(load(config, tiny, *extra, n_trials=1, name=name), storage, progress=False)
    path, _ = export(name, storage, conf_dir=ROOT / "conf", as_searched=True)
    try:
        cfg = compose(f"best_{name}", ["test=false", f"paths.output_dir={tmp_path / 'rerun'}"])
        for key, value in ostudy.best_params.items():
            assert OmegaConf.select(cfg, key) == value
        result = fit(cfg)
        assert result.best[ostudy.metric_names[0]] == pytest.approx(ostudy.best_value, abs=1e-6)
    finally:
        path.unlink()


@pytest.mark.slow
def test_export_then_final_training_as_a_user_types_it(tiny, storage, tmp_path):
    """The export trains at the experiment's own fidelity (the search's epochs, subset and seed
    left out and said so), and its checkpoint is what a further run goes on from."""
    search = [*tiny, "trainer.max_epochs=2", "data.train_subset=300", "callbacks.early_stopping=null"]
    assert cli("lr.py", "--n-trials", "1", "--study-name", "fin", "--storage", storage,
               "--keep-checkpoints", "best", *search, cwd=tmp_path).returncode == 0
    # the study config it ran with and what was typed then: a storage's own fixed overrides are not taken
    out = subprocess.run([sys.executable, "-m", "mhtrain.study", "export", "fin", "--config", "lr",
                          "--storage", storage, *search], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    path = ROOT / "conf" / "experiment" / "best_fin.yaml"
    try:
        assert out.returncode == 0, out.stderr[-2000:]
        assert "left out (--as-searched keeps them)" in out.stdout and "data.train_subset=300" in out.stdout
        cfg = compose("best_fin")
        assert cfg.trainer.max_epochs == compose("multihead_cnn_mnist").trainer.max_epochs
        assert cfg.data.train_subset is None and cfg.data.data_dir == str(tiny[0].split("=", 1)[1])
        ckpt = tmp_path / "runs" / "best_fin.ckpt"
        assert f"ckpt_path={ckpt.relative_to(tmp_path)}" in out.stdout
        final = subprocess.run([sys.executable, "-m", "mhtrain.train", "experiment=best_fin",
                                f"ckpt_path={ckpt}", "trainer.max_epochs=3",
                                f"paths.output_dir={tmp_path / 'final'}"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
        # it went on from the best epoch's checkpoint (1 or 2 of the search's 2), not from scratch
        assert re.search(r"^[12] epochs in", final.stdout, re.M), final.stdout[-500:]
        assert "test acc" in final.stdout
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("config", [c for c in STUDY_CONFIGS if "cifar100mh" not in c])
def test_a_trial_gets_the_config_its_recorded_overrides_compose(config, tiny, tmp_path, monkeypatch):
    """Trials start from a base composed once per process (compose is most of a trial's start-up):
    what a trial trains must be what Hydra composes from the overrides recorded on it."""
    monkeypatch.chdir(tmp_path)  # a study's folder lies inside the runs folder
    study = load(config, tiny)
    ostudy = optuna.create_study()
    ostudy.set_user_attr(OUTPUT_ROOT, str(tmp_path / "runs" / "studies" / "x"))
    for _ in range(3):
        trial = ostudy.ask()
        cfg = trial_config(study, trial)
        full = compose(study.experiment, [*trial.user_attrs["overrides"], *SEARCH_MODE,
                                          f"paths.output_dir={trial.user_attrs['output_dir']}"])
        assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(full, resolve=True)
        assert cfg.seed == study.seed + trial.number


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "normal", "low": 0, "high": 1}, "must be one of"),
    ({"type": "float", "low": 1.0, "high": 1.0}, "empty or inverted"),
    ({"type": "float", "low": 2.0, "high": 1.0}, "empty or inverted"),
    ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log=true needs low > 0"),
    ({"type": "categorical", "choices": []}, "non-empty"),
    ({"type": "int", "low": 1}, "needs `low` and `high`"),
])
def test_bad_search_space_entries(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_param("model.optimizer.lr", spec)


def test_negative_loss_weight_range_is_refused(tiny, tmp_path, monkeypatch):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "neg.yaml").write_text(
        "experiment: multihead_cnn_mnist\nsearch_space:\n"
        "  model.loss_weights.thickness: {type: float, low: -1.0, high: 1.0}\n")
    monkeypatch.setattr(study_config, "CONF_DIR", tmp_path)  # where study configs are read from
    with pytest.raises(ConfigError, match="loss weights must be >= 0"):
        study_config.load("neg", extra_overrides=tiny)


def test_metric_must_be_logged_and_the_study_config_exist(tiny):
    with pytest.raises(ConfigError, match="not logged by a model with heads \\['digit'\\]"):
        load("baseline_lr", tiny, metric="val/thickness_acc")
    with pytest.raises(ConfigError, match="no study config"):
        study_config.load("nope")


def test_a_search_key_that_does_not_exist_is_refused(tiny, tmp_path, monkeypatch):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "typo.yaml").write_text(
        "experiment: multihead_cnn_mnist\nsearch_space:\n"
        "  model.optimizer.learning_rate: {type: float, low: 0.001, high: 0.01}\n")
    monkeypatch.setattr(study_config, "CONF_DIR", tmp_path)
    with pytest.raises(ConfigError, match="search_space key model.optimizer.learning_rate does not exist"):
        study_config.load("typo", extra_overrides=tiny)


def test_a_loaded_study_is_frozen_and_keeps_every_bound(tiny):
    study = load("loss_weights", tiny)
    with pytest.raises(AttributeError):
        study.population = 4  # type: ignore[misc]
    stored = study.to_dict()["search_space"]
    assert stored["model.loss_weights.thickness"] == {"type": "float", "low": 0.0, "high": 2.0}
    assert stored["model.optimizer.lr"]["log"] is True


def test_resume_diffs_name_only_what_changed(tiny, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    opening.open_study(load("lr", tiny, n_trials=1), storage)
    with pytest.raises(ConfigError) as e:
        opening.open_study(load("lr", tiny, "trainer.max_epochs=1", n_trials=1), storage)
    assert "overrides: now with ['trainer.max_epochs=1']" in str(e.value) and "without" not in str(e.value)
    # allowed once, the study is now the new one: resuming it needs no flag again
    opening.open_study(load("lr", tiny, "trainer.max_epochs=1"), storage, allow_changes=True)
    ostudy = opening.open_study(load("lr", tiny, "trainer.max_epochs=1"), storage)
    assert ostudy.user_attrs[opening.EARLIER][0]["overrides"] == tiny


def test_a_study_name_hydra_would_misparse_still_gets_a_folder(tiny, storage, monkeypatch, tmp_path):
    """A swept comparison names its studies `arm@key:value`; a user may type `=` too."""
    monkeypatch.chdir(tmp_path)
    ostudy, _ = runner.run(load("lr", tiny, "trainer.max_epochs=1", n_trials=1, name="lr@x=1"), storage,
                           progress=False)
    assert [t.state for t in ostudy.get_trials()] == [TrialState.COMPLETE]


def test_existing_study_with_another_metric_is_refused(tiny, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    runner.run(load("lr", tiny, "trainer.max_epochs=1", n_trials=1), storage, progress=False)
    with pytest.raises(ConfigError, match="made differently.*metric: 'val/digit_acc' -> 'val/avg_acc'"):
        opening.open_study(load("lr", tiny, metric="val/avg_acc"), storage)
    assert len(optuna.load_study(study_name="lr", storage=open_storage(storage)).trials) == 1


def cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "studies" / script), "--no-progress", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "study", "params"), [
    ("lr.py", "lr", {"model.optimizer.lr"}),
    ("baselines.py", "baseline_lr", {"model.optimizer.lr"}),
    ("loss_weights.py", "loss_weights",
     {"model.optimizer.lr", "model.loss_weights.thickness", "model.loss_weights.smoothness"}),
])
def test_cli_end_to_end(script, study, params, tiny, storage, tmp_path):
    proc = cli(script, "--n-trials", "2", "--storage", storage, *tiny, "trainer.max_epochs=1",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"study {study}: 2 trials (2 complete)" in proc.stdout
    # how it trains, at the start and again at the end
    how = f"{study}: budget 2 trials, 1 worker(s), population 1 per worker (auto -> 1 on the CPU"
    assert proc.stdout.count(how) == 2, proc.stdout
    assert "optuna-dashboard" in proc.stdout
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    assert len(trials) == 2 and all(set(t.params) == params for t in trials)


@pytest.mark.slow
def test_cli_help_explains_each_option(tmp_path):
    proc = cli("loss_weights.py", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--n-trials", "--study-name", "--storage", "--experiment", "--sampler",
                 "--pruner", "--seed", "--timeout", "trainer.max_epochs=4"):
        assert flag in proc.stdout


def test_run_help_lists_the_study_configs(capsys):
    """`python -m mhtrain.study run --help` names every conf/study config (it once listed none)."""
    from mhtrain.study import __main__ as study_main

    with pytest.raises(SystemExit) as done:
        study_main.main(["run", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(p.stem in out for p in (ROOT / "conf" / "study").glob("*.yaml")) and "loss_weights" in out


@pytest.mark.parametrize("modules", [
    "mhtrain.study.__main__",  # `dashboard` answers at once, not after seconds of imports
    # the lifecycle, the ledger and the study config sit below the engines: no trainer in them
    "mhtrain.study.lifecycle, mhtrain.study.ledger, mhtrain.study.study_config, mhtrain.result",
])
def test_the_lower_layers_import_no_torch_or_lightning(modules, tmp_path):
    code = f"import sys; import {modules}; print(sorted({{'torch', 'lightning'}} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


@pytest.mark.slow
def test_a_timeout_says_it_stopped_the_study(tiny, tmp_path):
    proc = cli("lr.py", "--storage", f"sqlite:///{tmp_path / 't.db'}", "--timeout", "0.001",
               "--n-trials", "3", *tiny, "trainer.max_epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped by --timeout 0.001 s before the budget of 3" in proc.stdout


def test_the_failure_policy_stops_at_once_on_errors_that_fail_every_trial():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mhtrain.study import policy

    with pytest.raises(ConfigError):
        policy.after_failure(ConfigError("bad"), failures=1)
    with pytest.raises(ConfigError, match="Lightning refused this config"):
        policy.after_failure(MisconfigurationException("ReduceLROnPlateau conditioned on val/x"), failures=1)
    for failures in range(1, policy.MAX_FAILURES):  # one trial's bad luck: the study goes on
        policy.after_failure(RuntimeError("NaN"), failures=failures)
    with pytest.raises(RuntimeError):
        policy.after_failure(RuntimeError("NaN"), failures=policy.MAX_FAILURES)


def test_a_result_that_cannot_be_recorded_fails_its_trial_with_the_reason(tiny, tmp_path):
    from mhtrain.result import FitResult
    from mhtrain.study import study_config
    from mhtrain.study.lifecycle import Lifecycle
    from mhtrain.study.records import FAIL_REASON
    from mhtrain.study.storage import Heartbeat

    study = study_config.load("lr", n_trials=1, population=1, extra_overrides=tiny)
    ostudy = opening.open_study(study, f"sqlite:///{tmp_path / 'optuna.db'}")
    with Heartbeat(ostudy._storage) as heartbeat:
        life = Lifecycle(study, ostudy, heartbeat)
        trial, _ = life.start()
        no_val = FitResult(history=[{"val/loss": 0.5}], train_history=[], test={}, seconds=1.0,
                           params=1, heads=("digit",), output_dir=str(tmp_path))
        with pytest.raises(KeyError):
            life.end(trial, no_val)
    (t,) = ostudy.get_trials()
    assert t.state == TrialState.FAIL
    assert t.user_attrs[FAIL_REASON] == "KeyError: 'val/digit_acc'"


def test_a_study_run_composes_and_builds_its_config_once(tiny, tmp_path, monkeypatch):
    """Loading the study, the command line's data check and the trials share one composition;
    the model and Trainer are built once by the check, then once per trial by `fit`."""
    from mhtrain import config
    from mhtrain.study import cli, trials

    calls = {"compose": 0, "build": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(config, "hydra_compose", counted("compose", config.hydra_compose))
    monkeypatch.setattr(config, "check_builds", counted("build", config.check_builds))
    trials.study_base.cache_clear()
    trials.search_base.cache_clear()
    monkeypatch.chdir(tmp_path)
    assert cli.main("lr", "", ["--n-trials", "1", "--no-progress", "--storage", "sqlite:///s.db",
                               *tiny, "trainer.max_epochs=1"]) == 0
    assert calls == {"compose": 1, "build": 1}


def test_a_study_records_its_versions_and_a_resume_under_others_warns(tiny, tmp_path, capsys):
    from mhtrain.study import study_config

    study = study_config.load("lr", n_trials=1, population=1, extra_overrides=tiny)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ostudy = opening.open_study(study, storage)
    recorded = ostudy.user_attrs[opening.VERSIONS]
    assert recorded == {"mhtrain": "0.1.0", "torch": torch_version(), "lightning": lightning_version(),
                        "optuna": optuna.__version__}
    opening.open_study(study, storage)
    assert capsys.readouterr().err == ""  # same versions: nothing to say
    ostudy.set_user_attr(opening.VERSIONS, {**recorded, "optuna": "4.0.0"})
    opening.open_study(study, storage)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"optuna 4.0.0 -> {optuna.__version__}" in line and line.startswith("warning: study lr")


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0] if "+" in torch.__version__ else torch.__version__


def lightning_version() -> str:
    import lightning

    return lightning.__version__


def test_help_answers_before_torch_or_lightning_are_imported():
    """`--help` and a mistyped flag need only the parser: torch and Lightning cost seconds of CPU
    (bench/overhead.py times it)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "studies" / "lr.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--n-trials" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not {"torch", "lightning", "lightning.pytorch"} & imported


@pytest.mark.parametrize("population", [1, 2])
def test_a_trial_that_trains_all_its_epochs_is_complete_though_a_pruner_would_stop_it(
        tiny, tmp_path, population):
    from optuna.pruners import ThresholdPruner

    from mhtrain.study import study_config

    states = {}
    for epochs in (1, 2):
        study = study_config.load("lr", n_trials=2, population=population, name=f"last_{epochs}",
                           extra_overrides=[*tiny, f"trainer.max_epochs={epochs}",
                                            "callbacks.early_stopping=null", "data.train_subset=64"])
        ostudy = opening.open_study(study, f"sqlite:///{tmp_path / 'optuna.db'}")
        ostudy.pruner = ThresholdPruner(lower=1.5)  # no accuracy reaches it: every report says prune
        workers.work(study, ostudy)
        states[epochs] = [(t.state, t.user_attrs["epochs"]) for t in ostudy.get_trials()]
    assert states[1] == [(TrialState.COMPLETE, 1)] * 2  # its only epoch was its last
    assert states[2] == [(TrialState.PRUNED, 1)] * 2  # stopped with an epoch still to train


@pytest.mark.parametrize("planted", ["5.0.0", ["optuna"], {"optuna": {"_target_": "os.system"}}, None])
def test_a_planted_versions_record_is_read_as_data(tiny, tmp_path, capsys, planted):
    from mhtrain.study import study_config

    study = study_config.load("lr", n_trials=1, population=1, extra_overrides=tiny)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    opening.open_study(study, storage).set_user_attr(opening.VERSIONS, planted)
    opening.open_study(study, storage)  # resumes: nothing to compare, nothing raised
    assert capsys.readouterr().err == ""
