"""Warm start on real SQLite storages: the best K once, only the new space's keys, missing refused."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mhtrain import ConfigError
from mhtrain.study.summary import summary
from mhtrain.study.warmstart import ATTR, load_source, parse_warm_start, warm_start

LR = FloatDistribution(1e-4, 1e-1, log=True)
OLD = FloatDistribution(0.0, 1.0)
SPACE = ["model.optimizer.lr", "model.loss_weights.thickness", "model.loss_weights.smoothness"]
DEFAULTS = {"model.loss_weights.thickness": 0.5}  # smoothness: no default, left to the sampler


def source_study(url: str, name: str = "lr", direction: str = "maximize") -> optuna.Study:
    """Six finished trials whose value ranks them by lr (0.001 best), plus one pruned, one failed."""
    src = optuna.create_study(study_name=name, storage=url, direction=direction)
    for lr, value in ((0.01, 0.95), (0.001, 0.99), (0.03, 0.90), (0.002, 0.98), (0.05, 0.80),
                      (0.005, 0.97)):
        value = value if direction == "maximize" else 1 - value
        src.add_trial(create_trial(params={"model.optimizer.lr": lr, "old.knob": 0.3},
                                   distributions={"model.optimizer.lr": LR, "old.knob": OLD},
                                   value=value))
    for state in (TrialState.PRUNED, TrialState.FAIL):  # better lr, but never completed
        src.add_trial(create_trial(params={"model.optimizer.lr": 0.0001},
                                   distributions={"model.optimizer.lr": LR}, state=state))
    return src


def waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.WAITING,))


def run_waiting(study: optuna.Study) -> list[dict[str, float]]:
    """Run every enqueued trial with the new study's search space; the parameters each ran with."""
    ran = []

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, 0.0, 2.0) for k in SPACE[1:]}
        params[SPACE[0]] = trial.suggest_float(SPACE[0], 1e-4, 1e-2, log=True)
        ran.append(params)
        return 0.0

    study.optimize(objective, n_trials=len(waiting(study)))
    return ran


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_enqueues_the_best_k_once_even_on_resume(tmp_path, direction):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    src = source_study(url, direction=direction)
    new = optuna.create_study(study_name="loss_weights", storage=url, direction="maximize")
    assert warm_start(new, src, 3, SPACE, DEFAULTS) == 3

    # a resumed run loads the study afresh and asks again: nothing more is enqueued
    resumed = optuna.load_study(study_name="loss_weights", storage=url)
    assert warm_start(resumed, src, 3, SPACE, DEFAULTS) == 0
    assert len(waiting(resumed)) == 3
    assert resumed.user_attrs[ATTR] == {"lr": [1, 3, 5]}
    assert [p["model.optimizer.lr"] for p in run_waiting(resumed)] == [0.001, 0.002, 0.005]
    # a larger K tops up to K from the same source, never repeating one
    assert warm_start(resumed, src, 4, SPACE, DEFAULTS) == 1
    assert [p["model.optimizer.lr"] for p in run_waiting(resumed)] == [0.01]
    assert warm_start(resumed, src, 4, SPACE, DEFAULTS) == 0


def test_takes_only_the_new_space_keys_and_fills_defaults(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    src = source_study(url)
    new = optuna.create_study(study_name="loss_weights", storage=url, direction="maximize")
    warm_start(new, src, 1, SPACE, DEFAULTS)
    ran = run_waiting(new)
    (trial,) = new.get_trials()
    assert trial.user_attrs["warm_start"] == "lr#1"
    assert ran[0]["model.optimizer.lr"] == 0.001  # from the source
    assert ran[0]["model.loss_weights.thickness"] == 0.5  # the new study's default
    assert 0.0 <= ran[0]["model.loss_weights.smoothness"] <= 2.0  # sampled
    assert "old.knob" not in trial.params  # the source's key the new space lacks is dropped


def test_the_summary_names_the_warm_start_source(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    new = optuna.create_study(study_name="new", storage=url, direction="maximize")
    warm_start(new, source_study(url), 2, SPACE, DEFAULTS)
    run_waiting(new)
    assert "warm-started: 2 trial(s) enqueued from lr" in summary(new, 1, url)


def test_k_beyond_the_complete_trials_takes_what_there_is(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    src = source_study(url)
    new = optuna.create_study(study_name="new", storage=url, direction="maximize")
    assert warm_start(new, src, 50, SPACE, DEFAULTS) == 6  # pruned and failed trials are not used
    assert 0.0001 not in [p["model.optimizer.lr"] for p in run_waiting(new)]


def test_refuses_missing_empty_and_self(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    source_study(url)
    with pytest.raises(ConfigError, match="no study named 'nope'.*lr"):
        load_source(url, "nope:2", "loss_weights")
    with pytest.raises(ConfigError, match="itself"):
        load_source(url, "loss_weights", "loss_weights")
    empty = optuna.create_study(study_name="empty", storage=url)
    new = optuna.create_study(study_name="new", storage=url)
    with pytest.raises(ConfigError, match="empty has no complete trial"):
        warm_start(new, empty, 2, SPACE, DEFAULTS)
    src, k = load_source(url, "lr:2", "new")
    assert (src.study_name, k) == ("lr", 2)


@pytest.mark.parametrize("text, expected", [("lr", ("lr", 1)), ("lr:3", ("lr", 3)),
                                            ("a:b:2", ("a:b", 2))])
def test_parse_warm_start(text, expected):
    assert parse_warm_start(text) == expected


@pytest.mark.parametrize("text", ["", ":3", "lr:", "lr:0", "lr:-1", "lr:x", "lr:1.5"])
def test_parse_warm_start_refuses(text):
    with pytest.raises(ConfigError, match="--warm-start"):
        parse_warm_start(text)


def test_a_source_value_that_is_not_plain_data_enqueues_nothing(tmp_path):
    """A source trial in a storage someone else wrote: an interpolation stored as its value is
    refused in one line before the new study records or enqueues anything."""
    from optuna.distributions import CategoricalDistribution

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    src = optuna.create_study(study_name="lr", storage=url, direction="maximize")
    planted = "${oc.decode:x}"
    src.add_trial(create_trial(params={"model.optimizer.lr": planted}, value=0.9,
                               distributions={"model.optimizer.lr": CategoricalDistribution([planted])}))
    new = optuna.create_study(study_name="new", storage=url, direction="maximize")
    with pytest.raises(ConfigError, match=r"^study lr, trial 0: model.optimizer.lr \(an interpolation"):
        warm_start(new, src, 1, SPACE, DEFAULTS)
    assert not waiting(new) and ATTR not in new.user_attrs
