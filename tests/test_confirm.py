"""--confirm: the top configurations re-trained with fresh seeds on the validation split, a winner
named only when it beats each other one (paired t-test, Holm), else a tie; and the summary's
binomial error and runner-up gap without it."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import create_trial
from scipy import stats

from mhtrain.evaluate.stats import holm
from mhtrain.study import confirm, runner, space
from mhtrain.study.summary import summary
from tests.conftest import tiny_for

LR = "model.optimizer.lr"


def test_the_verdict_with_known_values():
    values = {2: [0.95, 0.96, 0.94], 5: [0.90, 0.92, 0.89], 7: [0.80, 0.83, 0.81]}
    c = confirm.judge("val/digit_acc", "maximize", [5, 2, 7], [10, 11, 12], values)
    raw = [stats.ttest_rel(values[2], values[t]).pvalue for t in (5, 7)]
    assert c.candidate == 2 and c.winner == 2 == c.chosen and c.tied == [2]
    assert [c.p_holm[5], c.p_holm[7]] == pytest.approx(holm(raw))
    assert c.lines()[-1].startswith("winner: trial 2, better than each other one (paired t-test, Holm over 2")
    # one runner-up within the noise: no winner, the tie listed, export's pick by search rank
    close = {**values, 5: [0.951, 0.955, 0.945]}
    c = confirm.judge("val/digit_acc", "maximize", [5, 2, 7], [10, 11, 12], close)
    assert c.winner is None and c.tied == [5, 2] and c.chosen == 5
    assert c.lines()[-1] == ("indistinguishable at this budget: trials 5, 2; export uses trial 5, "
                             "the best-ranked by the search among the tied")
    # a loss is minimized: the lowest mean is the candidate
    losses = {1: [0.5, 0.52, 0.49], 2: [0.2, 0.25, 0.21]}
    low = confirm.judge("val/loss", "minimize", [1, 2], [0, 1, 2], losses)
    assert low.winner == 2


@pytest.fixture(scope="module")
def searched(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    """One real trial of the lr study on tiny data (two epochs of 4 batches, so a learning rate
    shows): its record is what hand-made trials copy."""
    root = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        fidelity = [*tiny_for(tiny_data, epochs=2), "data.train_subset=128"]
        study = space.load("lr", n_trials=1, pruner="none", extra_overrides=fidelity)
        ostudy, _ = runner.run(study, f"sqlite:///{root / 'optuna.db'}", progress=False)
    return ostudy


def made(real: optuna.Study, trials: list[tuple[float, float]]) -> optuna.Study:
    """A study with the real one's config and trials of the given (lr, search value), best first
    by value, each recorded as a real trial is."""
    ostudy = optuna.create_study(direction="maximize")
    ostudy.set_metric_names(real.metric_names or ["val/digit_acc"])
    ostudy.set_user_attr("config", real.user_attrs["config"])
    like = real.trials[0]
    for i, (lr, value) in enumerate(trials):
        overrides = [f"++{LR}={lr}" if o.startswith(f"++{LR}=") else
                     f"seed={i}" if o.startswith("seed=") else o for o in like.user_attrs["overrides"]]
        ostudy.add_trial(create_trial(params={LR: lr}, distributions=like.distributions, value=value,
                                      user_attrs={**like.user_attrs, "overrides": overrides}))
    return ostudy


@pytest.mark.slow
def test_a_clearly_better_configuration_is_named(searched, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = made(searched, [(1e-2, 0.99), (1e-4, 0.98)])  # a good lr and the slowest in the range
    cfg = confirm.confirm_config(ostudy, ostudy.trials[0], 2)
    assert cfg.test is False and cfg.seed == 2  # validation only, a seed no trial used
    lines: list[str] = []
    result = confirm.confirm(ostudy, k=2, n_seeds=5, say=lines.append)
    assert result.seeds == [2, 3, 4, 5, 6] and len(lines) == 10
    assert result.winner == 0 == result.chosen, result.lines()
    assert min(result.values[0]) > max(result.values[1])
    stored = ostudy.user_attrs[confirm.ATTR]
    assert stored["winner"] == 0 and stored["values"]["1"] == result.values[1]
    assert sorted(p.name for p in (tmp_path / "runs" / "confirm").iterdir())  # its own folders


@pytest.mark.slow
def test_two_equal_configurations_are_indistinguishable(searched, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = made(searched, [(1e-2, 0.99), (1e-2, 0.98)])  # the same configuration twice
    result = confirm.confirm(ostudy, k=2, n_seeds=2, say=lambda _: None)
    assert result.winner is None and result.tied == [0, 1] and result.chosen == 0
    assert result.values[0] == result.values[1]  # same configuration, same seeds
    assert result.lines()[-1].startswith("indistinguishable at this budget: trials 0, 1; export uses trial 0")
    assert ostudy.user_attrs[confirm.ATTR]["winner"] is None


def test_the_summary_gives_the_bests_binomial_error_and_the_runner_ups_gap():
    ostudy = optuna.create_study(direction="maximize")
    ostudy.set_metric_names(["val/digit_acc"])
    for value in (0.9928, 0.9916, 0.97):  # the headline study's top two
        ostudy.add_trial(create_trial(value=value))
    text = summary(ostudy, 10, "sqlite:///x.db", val_images=5000)
    assert ("binomial SE of the best on 5,000 validation images: 0.12 pp; runner-up trial 1 at 0.9916, "
            "6 image(s) behind") in text
    assert "runner-up" not in summary(ostudy, 10, "sqlite:///x.db")  # size unknown: no claim


def test_confirm_asks_for_two_configurations_and_two_seeds(tmp_path, monkeypatch, capsys):
    from mhtrain.study.cli import main
    monkeypatch.chdir(tmp_path)
    for args, message in ((["--confirm", "1"], "--confirm 1: confirm at least 2"),
                          (["--confirm", "--confirm-seeds", "1"], "--confirm-seeds 1: a paired test")):
        assert main("lr", "lr", args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_export_and_compare_hand_on_the_confirmed_choice_and_refuse_a_planted_one(searched):
    from mhtrain import ConfigError
    from mhtrain.evaluate.reruns import rerun_config
    from mhtrain.study.confirm import chosen_trial

    ostudy = made(searched, [(1e-2, 0.99), (1e-3, 0.98)])
    assert chosen_trial(ostudy).number == 0  # not confirmed: the search's best
    assert rerun_config(ostudy, 9).model.optimizer.lr == 1e-2
    ostudy.set_user_attr(confirm.ATTR, {"chosen": 1})
    assert chosen_trial(ostudy).number == 1  # confirmed on fresh seeds: what `--confirm` printed
    assert rerun_config(ostudy, 9).model.optimizer.lr == 1e-3  # compare re-trains the same answer
    for planted in ("1; touch x", 7, True, None):  # a storage is written by others
        ostudy.set_user_attr(confirm.ATTR, {"chosen": planted})
        with pytest.raises(ConfigError, match="not a complete trial"):
            chosen_trial(ostudy)
