"""Sub-epoch reports (`pruner: {report_every: 0.25}`): the first epoch also reports after each
quarter, read without changing training; a trial judged hopeless there stops after a quarter of
an epoch; steps stay in one unit; the points show on the trial's curves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.study import opening, study_config, workers
from mhtrain.study.summary import summary

NEVER = {"name": "median", "n_startup_trials": 100}  # a pruner that never stops these trials
LRS = (3e-3, 1e-3)


def run(tmp_path: Path, tiny: list[str], name: str, pruner: dict, *extra: str):
    study = study_config.load("lr", name=name, n_trials=len(LRS), population=1, pruner=pruner,
                       extra_overrides=[*tiny, "callbacks.early_stopping=null", *extra])
    ostudy = opening.open_study(study, f"sqlite:///{tmp_path / 'optuna.db'}")
    for lr in LRS:
        ostudy.enqueue_trial({"model.optimizer.lr": lr})
    return study, ostudy


def test_quarter_reports_leave_training_as_it_was(tiny, tmp_path):
    """The same trials with and without quarter reports train to the same weights: their epoch
    ends report equal values, at steps 4 and 8 against 1 and 2, and end with equal results."""
    values = {}
    for every in (1.0, 0.25):
        study, ostudy = run(tmp_path, tiny, f"every_{every}", {**NEVER, "report_every": every},
                            "logger=[csv]")
        workers.work(study, ostudy)
        values[every] = [(t.state, t.intermediate_values, t.value) for t in ostudy.get_trials()]
    for (state, epoch_steps, value), (state_q, quarter_steps, value_q) in zip(
            values[1.0], values[0.25], strict=True):
        assert state == state_q == TrialState.COMPLETE
        assert sorted(epoch_steps) == [1, 2] and sorted(quarter_steps) == [1, 2, 3, 4, 8]
        assert [quarter_steps[4], quarter_steps[8]] == [epoch_steps[1], epoch_steps[2]]
        assert value_q == value
    # the quarter points are on the trial's own val curve, before the first epoch's end
    trial = ostudy.get_trials()[0]
    rows = list(csv.DictReader(next(Path(trial.user_attrs["output_dir"]).rglob("metrics.csv")).open()))
    steps = [int(r["step"]) for r in rows if r.get("val/digit_acc")]
    assert steps == [3, 7, 11, 15, 31]  # 16 batches an epoch: after 4, 8 and 12, then epoch ends


def test_a_trial_judged_after_a_quarter_trains_a_quarter(tiny, tmp_path):
    study, ostudy = run(tmp_path, tiny, "quarter", {"name": "sha", "report_every": 0.25})
    ostudy.pruner = ThresholdPruner(lower=1.5)  # no accuracy reaches it: every report says prune
    workers.work(study, ostudy)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert [sorted(t.intermediate_values) for t in trials] == [[1], [1]]
    assert [t.user_attrs["epochs"] for t in trials] == [0.25, 0.25]
    assert "epochs used: 0.5 of 4 an unpruned search would run (12%)" in summary(ostudy, 2, "x")


def test_sub_epoch_reports_in_a_population_are_refused(tiny):
    with pytest.raises(ConfigError, match=r"pruner.report_every=0.25 with a population of 2 .*members "
                                          r"leave a population at epoch ends"):
        study_config.load("lr", population=2, pruner={"name": "sha", "report_every": 0.25},
                          extra_overrides=tiny)
