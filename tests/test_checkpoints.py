"""--keep-checkpoints: trials' best-epoch weights as Optuna artifacts beside the storage."""

import copy
import re
import shlex
import subprocess
from pathlib import Path

import lightning as L
import optuna
import pytest
import torch
from hydra.utils import instantiate
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from mhtrain import ConfigError, program
from mhtrain.config import build_model, compose
from mhtrain.population.check import population_size
from mhtrain.study import __main__ as study_main
from mhtrain.study import runner, study_config
from mhtrain.study.checkpoints import ARTIFACT_DIR, CHECKPOINT
from mhtrain.study.export import export_checkpoint
from mhtrain.study.storage import artifact_dir, open_storage
from mhtrain.study.summary import summary
from mhtrain.study.trials import search_base
from tests.conftest import tiny_for


def run(tiny_data: Path, tmp_path: Path, keep: str, n_trials: int, pruner: str = "none") -> optuna.Study:
    study = study_config.load("lr", keep_checkpoints=keep, n_trials=n_trials, name=f"keep_{keep}",
                              pruner=pruner,
                       extra_overrides=[*tiny_for(tiny_data), "callbacks.early_stopping=null"])
    ostudy, _ = runner.run(study, f"sqlite:///{tmp_path / 'optuna.db'}", progress=False)
    return ostudy


def test_keep_all_stores_each_trial_and_export_hands_over_weights_that_score_the_best(
        tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = run(tiny_data, tmp_path, "all", 3)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert ostudy.user_attrs[ARTIFACT_DIR] == str(tmp_path / "optuna-artifacts")
    for t in trials:
        (meta,) = get_all_artifact_meta(t, storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
        assert meta.artifact_id == t.user_attrs[CHECKPOINT]
        assert (tmp_path / "optuna-artifacts" / meta.artifact_id).is_file()
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # the store holds the only copy

    ckpt = export_checkpoint("keep_all", f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "best.ckpt")
    best = ostudy.best_trial
    cfg = compose(best.user_attrs["experiment"], [*best.user_attrs["overrides"], "test=false",
                                                  f"paths.output_dir={tmp_path / 'check'}"])
    model = build_model(cfg)
    model.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(model, datamodule=instantiate(cfg.data), verbose=False)
    assert metrics["val/digit_acc"] == pytest.approx(best.value, abs=1e-6)  # the best epoch's weights

    text = summary(ostudy, 2, f"sqlite:///{tmp_path / 'optuna.db'}")
    assert f"checkpoints: 3 kept in {tmp_path / 'optuna-artifacts'}" in text
    assert f"--artifact-dir {tmp_path / 'optuna-artifacts'}" in text
    assert f"make dashboard STORAGE=sqlite:///{tmp_path / 'optuna.db'}" in text
    # the hint works as typed, from here, on this study's own storage (not the default one)
    (hint,) = re.findall(r"`(\S+ -m mhtrain\.study export [^`]+)`", text)
    assert shlex.split(hint)[0] == shlex.split(program())[0]  # this environment's python, by its path
    assert study_main.main(shlex.split(hint)[3:]) == 0
    # the dashboard's command runs as typed in a fresh shell, the environment not activated
    (dashboard,) = [x.removeprefix("dashboard: ").split("  (or")[0] for x in text.splitlines()
                    if x.startswith("dashboard: ")]
    fresh = subprocess.run(f"{dashboard} --version", shell=True, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert fresh.returncode == 0, fresh.stderr[-2000:]


def test_keep_best_keeps_the_trials_that_beat_every_earlier_one(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = run(tiny_data, tmp_path, "best", 5)
    best_so_far, expected = float("-inf"), []
    for t in sorted(ostudy.get_trials(), key=lambda t: t.datetime_complete):
        if t.value > best_so_far:
            best_so_far = t.value
            expected.append(t.number)
    kept = [t.number for t in ostudy.get_trials() if CHECKPOINT in t.user_attrs]
    assert kept == expected and ostudy.best_trial.number in kept
    assert len(list((tmp_path / "optuna-artifacts").iterdir())) == len(kept)


def test_no_checkpoint_unless_asked_and_export_says_none(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = run(tiny_data, tmp_path, "none", 1)
    assert ARTIFACT_DIR not in ostudy.user_attrs
    assert not list(tmp_path.rglob("*.ckpt"))
    assert export_checkpoint("keep_none", f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "b.ckpt") is None


def test_a_population_cannot_keep_checkpoints(tiny):
    with pytest.raises(ConfigError, match="keep"):
        study_config.load("lr", keep_checkpoints="best", population=2, extra_overrides=tiny)
    # auto falls back to solo trials, even where it would stack (a GPU's base config)
    base = copy.deepcopy(search_base("multihead_cnn_mnist", tuple(tiny)))  # the cached one is shared
    base.trainer.accelerator = "cuda"
    k, why = population_size("auto", base, ["model.optimizer.lr"], keep_checkpoints=True)
    assert k == 1 and "keep" in why


@pytest.mark.parametrize(("url", "folder"), [
    ("sqlite:///runs/optuna.db", "runs/optuna-artifacts"),
    ("studies.journal", "studies-artifacts"),
    ("postgresql+psycopg://u@host/db", "runs/artifacts"),
])
def test_the_artifact_folder_sits_beside_the_storage(url, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifact_dir(url) == tmp_path / folder
