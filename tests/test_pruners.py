"""The pruner registry: every name builds and prunes a real Optuna study within its budget, and a
bad `pruner:` is refused with one line naming what is allowed."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.study.pruners import NAMES, PrunerSpec, build_pruner, parse_pruner

MAX_EPOCHS = 9
N_TRIALS = 16


def curve(x: float, epoch: int) -> float:
    """A learning curve whose height the parameter sets: better x, better at every epoch."""
    return x * (1 - math.exp(-epoch / 2))


def run_study(spec: PrunerSpec, url: str) -> optuna.Study:
    """A tiny study reporting one value per epoch, steps = epochs trained, as the objective does."""
    ostudy = optuna.create_study(storage=url, direction="maximize",
                                 sampler=optuna.samplers.RandomSampler(seed=0),
                                 pruner=build_pruner(spec, MAX_EPOCHS))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        for epoch in range(1, MAX_EPOCHS + 1):
            trial.report(curve(x, epoch), step=epoch)
            trial.set_user_attr("epochs", epoch)
            if epoch < MAX_EPOCHS and trial.should_prune():
                raise optuna.TrialPruned()
        return curve(x, MAX_EPOCHS)

    ostudy.optimize(objective, n_trials=N_TRIALS)
    return ostudy


@pytest.mark.parametrize("name", NAMES)
def test_each_pruner_builds_and_prunes_within_budget(name, tmp_path):
    ostudy = run_study(parse_pruner(name), f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = ostudy.get_trials()
    states = [t.state for t in trials]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    epochs = sum(t.user_attrs["epochs"] for t in trials)
    assert len(trials) == N_TRIALS and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    if name == "none":
        assert not pruned and epochs == N_TRIALS * MAX_EPOCHS
        return
    assert pruned, f"{name} pruned nothing"
    assert epochs < N_TRIALS * MAX_EPOCHS
    args = dict(parse_pruner(name).args)
    if "n_startup_trials" in args:  # the spec's start-up reaches the pruner: those trials run in full
        startup = trials[: args["n_startup_trials"]]
        assert all(t.state == TrialState.COMPLETE for t in startup), [t.state for t in startup]
    if "reduction_factor" in args:  # judged only at the rungs: min_resource * reduction_factor**k
        rungs = {args["min_resource"] * args["reduction_factor"] ** k for k in range(4)}
        assert {t.last_step for t in pruned} <= rungs
    # the best curve is never cut: the study finds the top of what it sampled
    best_x = max(t.params["x"] for t in trials)
    assert ostudy.best_trial.params["x"] == best_x


def test_names_and_mappings_resolve_to_full_specs():
    assert parse_pruner("sha") == parse_pruner({"name": "sha"})
    spec = parse_pruner({"name": "hyperband", "min_resource": 2, "reduction_factor": 4})
    assert dict(spec.args)["min_resource"] == 2 and dict(spec.args)["reduction_factor"] == 4
    assert parse_pruner(spec.to_dict()) == spec  # what a study records reads back the same
    assert "percentile" not in dict(parse_pruner("median").args)  # median is the 50th, fixed
    assert isinstance(build_pruner("median", MAX_EPOCHS), optuna.pruners.PercentilePruner)
    assert isinstance(build_pruner("none", MAX_EPOCHS), optuna.pruners.NopPruner)


@pytest.mark.parametrize("spec, message", [
    ("asha", r"pruner='asha': must be one of none, median, percentile, sha, hyperband"),
    ({"min_resource": 1}, r"pruner=None: must be one of"),
    ({"name": "median", "percentile": 30}, r"median takes no argument percentile; its arguments: "
                                           r"n_startup_trials"),
    ({"name": "sha", "patience": 2}, r"sha takes no argument patience; its arguments: min_resource"),
    ({"name": "none", "min_resource": 1}, r"none takes no argument min_resource; its arguments: none"),
    ({"name": "sha", "reduction_factor": 1}, r"pruner.reduction_factor=1: must be >= 2"),
    ({"name": "percentile", "percentile": 150}, r"percentile=150: must be between 0 and 100"),
    ({"name": "hyperband", "min_resource": 1.5}, r"min_resource=1.5: must be an integer"),
    ({"name": "sha", "min_resource": "auto"}, r"min_resource='auto': must be an integer"),
    ({"name": "median", "n_startup_trials": True}, r"n_startup_trials=True: must be an integer"),
])
def test_bad_pruner_is_refused_in_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_pruner(spec)
    assert "\n" not in str(e.value)


def test_min_resource_beyond_the_epochs_is_refused():
    with pytest.raises(ConfigError, match="min_resource=4 exceeds the experiment's trainer.max_epochs=3"):
        build_pruner({"name": "sha", "min_resource": 4}, max_epochs=3)


@pytest.mark.parametrize("every, message", [
    (0.3, r"pruner.report_every=0.3: must be 1 or 1/n of an epoch"),
    (1.5, r"pruner.report_every=1.5: must be between 0 and 1"),
    (0, r"pruner.report_every=0.0: must be 1 or 1/n of an epoch"),
    ("quarter", r"pruner.report_every='quarter': must be a number"),
])
def test_a_report_every_that_is_no_fraction_of_an_epoch_is_refused(every, message):
    with pytest.raises(ConfigError, match=message):
        parse_pruner({"name": "sha", "report_every": every})


def test_sub_epoch_steps_keep_one_unit_for_every_resource():
    """Steps count `report_every` epochs: Hyperband's max resource is the epochs in those steps,
    and a study of epoch steps records its pruner as before (older studies resume unchanged)."""
    assert build_pruner({"name": "hyperband", "report_every": 0.25}, 9)._max_resource == 36
    assert build_pruner("hyperband", 9)._max_resource == 9
    assert parse_pruner("sha").to_dict() == {"name": "sha", "min_resource": 1, "reduction_factor": 4,
                                             "min_early_stopping_rate": 0, "bootstrap_count": 0}
    quarter = parse_pruner({"name": "sha", "report_every": 0.25})
    assert quarter.report_every == 0.25 and parse_pruner(quarter.to_dict()) == quarter
    with pytest.raises(ConfigError, match=r"min_resource=40 exceeds the experiment's trainer.max_epochs"
                                          r"=9 \(36 steps of 0.25 epoch\)"):
        build_pruner({"name": "sha", "min_resource": 40, "report_every": 0.25}, 9)
