"""--confirm: the race of the top configurations and the default on fresh seeds and fresh
validation images, run on tiny data (its statistics are in test_race_stats.py): its endings, a
failed finalist, a killed race that resumes without re-training, what export hands over; and the
summary's binomial error and runner-up gap without it."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import create_trial

from mhtrain.study import confirm, runner, study_config
from mhtrain.study.summary import summary
from tests.conftest import ROOT, tiny_for

LR = "model.optimizer.lr"


@pytest.fixture(scope="module")
def searched(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    """One real trial of the lr study on tiny data (two epochs of 4 batches, so a learning rate
    shows): its record is what hand-made trials copy."""
    root = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        fidelity = [*tiny_for(tiny_data, epochs=2), "data.train_subset=128"]
        study = study_config.load("lr", n_trials=1, pruner="none", extra_overrides=fidelity)
        ostudy, _ = runner.run(study, f"sqlite:///{root / 'optuna.db'}", progress=False)
    return ostudy


def made(real: optuna.Study, trials: list[tuple[float, float]], storage: str | None = None) -> optuna.Study:
    """A study with the real one's config and trials of the given (lr, search value), best first
    by value, each recorded as a real trial is."""
    ostudy = optuna.create_study(study_name=real.study_name, direction="maximize",  # checked as the lr study
                                 storage=storage)
    ostudy.set_metric_names(real.metric_names or ["val/digit_acc"])
    ostudy.set_user_attr("config", real.user_attrs["config"])
    like = real.trials[0]
    for i, (lr, value) in enumerate(trials):
        overrides = [f"++{LR}={lr}" if o.startswith(f"++{LR}=") else
                     f"seed={i}" if o.startswith("seed=") else o for o in like.user_attrs["overrides"]]
        ostudy.add_trial(create_trial(params={LR: lr}, distributions=like.distributions, value=value,
                                      user_attrs={**like.user_attrs, "overrides": overrides}))
    return ostudy


def race_runs(ostudy: optuna.Study) -> dict[str, dict]:
    return {k: v for k, v in ostudy.user_attrs.items() if k.startswith("race:")}


@pytest.mark.slow
def test_a_race_drops_a_clearly_worse_configuration_and_resumes_without_retraining(searched, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = made(searched, [(1e-2, 0.99), (1e-4, 0.98)])  # a good lr and the slowest in the range
    cfg = confirm.confirm_config(ostudy, ostudy.trials[0], 2)
    assert cfg.test is False and cfg.seed == 2 == cfg.data.split_seed  # fresh seed, fresh val images
    default = confirm.default_config(ostudy, ostudy.trials[0], 2)
    assert default.model.optimizer.lr == 0.002 and default.data.train_subset == 128  # the experiment's lr
    lines: list[str] = []

    def killed_after_four(line: str) -> None:  # the race's process dies after its 4th stored run
        lines.append(line)
        if len(lines) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        confirm.confirm(ostudy, k=2, cap=8, say=killed_after_four)
    stored = race_runs(ostudy)
    assert len(stored) == 4 and confirm.ATTR not in ostudy.user_attrs
    again: list[str] = []
    verdict = confirm.confirm(ostudy, k=2, cap=8, say=again.append)
    trained = [line for line in again if line.startswith("  round")]
    assert not any(f"seed {k.split(':')[2]}, {k.split(':')[1]}:" in line for line in trained for k in stored)
    # the slowest lr is dropped; on tiny data the good lr and the default both score 1.0 on every seed
    assert set(verdict.eliminated) == {"trial 1"}, "\n".join(verdict.lines("val/digit_acc"))
    assert verdict.ending == "equivalent" and verdict.alive == ["trial 0", "default"]
    assert verdict.headline().startswith("tuning is not shown to beat the default")
    runs = race_runs(ostudy)  # each run stores its training time, and the race sums them as its cost
    spent = sum(r["seconds"] for r in runs.values())
    assert again[-1] == f"race cost: {len(runs)} run(s), {spent:.0f} s training", again[-1]
    stored = ostudy.user_attrs[confirm.ATTR]
    assert stored["chosen"] == 0 and stored["ending"] == "equivalent"
    assert sorted(p.name for p in (tmp_path / "runs" / "confirm").iterdir())  # its own folders
    # a larger cap continues the same race: its stored rounds count, nothing is trained again
    before = race_runs(ostudy)
    assert confirm.confirm(ostudy, k=2, cap=12, say=lambda _: None).rounds == verdict.rounds
    assert race_runs(ostudy) == before


@pytest.mark.slow
def test_two_equal_configurations_give_equal_runs_and_no_winner(searched, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ostudy = made(searched, [(1e-2, 0.99), (1e-2, 0.98)])  # the same configuration twice
    verdict = confirm.confirm(ostudy, k=2, cap=2, say=lambda _: None)
    assert verdict.means["trial 0"] == verdict.means["trial 1"]  # same configuration, same seeds
    assert verdict.ending == "undecided" and verdict.chosen == "trial 0"  # equal means: the search's order


def test_a_failed_or_nan_finalist_run_is_recorded_with_its_reason(tiny_overrides, tmp_path):
    """A run's own failure is that finalist's (recorded, it leaves the race); one that every run
    would meet alike (changed data, a closed output) ends the race and records nothing against it."""
    import os

    from mhtrain import DataError
    from mhtrain.config import compose
    from mhtrain.data import mnist
    from mhtrain.study.policy import MachineFault
    from mhtrain.train import fit
    from tests.conftest import write_tiny_mnist

    nan = compose("multihead_cnn_mnist", [*tiny_overrides, "model.loss_weights.digit=1e39"])  # inf in float32
    run = confirm._train(fit, nan, "val/loss")
    assert run.value is None and run.error.startswith("non-finite val/loss")
    assert run.seconds > 0  # it trained: the race's cost counts it
    bad = compose("multihead_cnn_mnist", [*tiny_overrides, "+trainer.limit_val_batches=0"])  # no val metric
    run = confirm._train(fit, bad, "val/loss")
    assert run.value is None and run.error.startswith("RuntimeError: Early stopping conditioned on metric")
    data = write_tiny_mnist(tmp_path / "data")
    broken = compose("multihead_cnn_mnist", [*tiny_overrides, f"data.data_dir={data}"])
    (mnist.raw_dir(data) / mnist.SPLIT_FILES["train"][0]).write_bytes(b"\0" * 20)  # changed under the race
    with pytest.raises(DataError):
        confirm._train(fit, broken, "val/loss")
    read, write = os.pipe()
    os.close(read)  # whatever it printed to is gone: the race was stopped while it trained a finalist

    def printing(cfg):
        os.write(write, b"epoch 1\n")  # what a fit prints, into the closed pipe

    try:
        with pytest.raises(MachineFault, match=r"^its output: Broken pipe \(EPIPE\); "):
            confirm._train(printing, nan, "val/loss")
    finally:
        os.close(write)


def test_export_hands_over_the_best_fresh_seed_mean_not_the_search_rank(searched, tmp_path, monkeypatch):
    """A third-ranked trial with the best mean over the race's stored rounds is what export and
    compare hand over, and export says so; the stored runs are replayed, nothing trains."""
    from mhtrain.evaluate.reruns import rerun_config
    from mhtrain.study.confirm import chosen_trial
    from mhtrain.study.export import export, handover_lines

    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'race.db'}"
    ostudy = made(searched, [(1e-2, 0.99), (3e-3, 0.985), (1e-3, 0.98)], storage)
    first = 10
    ostudy.set_user_attr("race", {"finalists": [0, 1, 2], "first_seed": first, "delta": 0.002})
    for i in range(3):  # three rounds stored; trial 2 best on every fresh seed, none confidently
        for arm, v in (("trial 0", 0.950), ("trial 1", 0.951), ("trial 2", 0.953), ("default", 0.949)):
            timed = {"seconds": 30.0} if i == 0 else {}  # the later rounds as an older race stored them
            ostudy.set_user_attr(f"race:{arm}:{first + i}", {"value": v + 0.001 * (i % 2), **timed})
    said: list[str] = []
    verdict = confirm.confirm(ostudy, k=3, cap=3, say=said.append)
    assert not [line for line in said if line.startswith("  round")]  # nothing trained
    assert said[-1] == "race cost: 12 run(s), 120 s training (the 4 run(s) that stored their time)"
    assert verdict.ending == "undecided" and verdict.chosen == "trial 2"
    assert chosen_trial(ostudy).number == 2
    assert rerun_config(ostudy, 9).model.optimizer.lr == 1e-3
    path, dropped = export("lr", storage, conf_dir=ROOT / "conf")
    try:
        said = handover_lines("lr", storage, path, dropped, None)
    finally:
        path.unlink()
    assert said[0].endswith("best_lr.yaml: trial 2, chosen by the race on fresh seeds: the race is "
                            "undecided; the best mean over fresh seeds among the finalists still in the race")
    assert said[1].startswith("it trains at 10 epochs on the whole training split; the search's ")
    assert said[-1] == "no checkpoint kept for it (run the study with --keep-checkpoints best to keep one)"
    # the default chosen: export and compare hand over the experiment's own values
    ostudy.set_user_attr(confirm.ATTR, {"chosen": "default"})
    default = chosen_trial(ostudy)
    assert default.params == {} and not any(o.startswith(f"++{LR}") for o in default.user_attrs["overrides"])
    assert rerun_config(ostudy, 9).model.optimizer.lr == 0.002


def test_a_race_refuses_a_different_design_than_the_one_it_stored(searched):
    from mhtrain import ConfigError

    ostudy = made(searched, [(1e-2, 0.99), (1e-3, 0.98)])
    ostudy.set_user_attr("race", {"finalists": [0, 1], "first_seed": 10, "delta": 0.002})
    with pytest.raises(ConfigError, match="continue it with --confirm 2 --confirm-delta 0.002"):
        confirm.confirm(ostudy, k=3, cap=3)
    for planted in ({"finalists": "0", "first_seed": 1, "delta": 0.1}, {"finalists": [0], "first_seed": -5,
                    "delta": 0.1}, [1, 2], {"finalists": [0], "first_seed": 1, "delta": float("nan")}):
        ostudy.set_user_attr("race", planted)
        with pytest.raises(ConfigError, match="stored `race` refused"):
            confirm.confirm(ostudy, k=1, cap=3)
    ostudy.set_user_attr("race", {"finalists": [0, 1], "first_seed": 10, "delta": 0.002})
    for planted in ({"value": float("nan")}, {"value": 0.9, "seconds": -1.0}):
        ostudy.set_user_attr("race:trial 0:10", planted)
        with pytest.raises(ConfigError, match="stored `race:trial 0:10` refused"):
            confirm.confirm(ostudy, k=2, cap=3)


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
    for args, message in ((["--confirm", "0"], "--confirm 0: race at least 1"),
                          (["--confirm", "--confirm-seeds", "1"], "--confirm-seeds 1: a paired race"),
                          (["--confirm", "--confirm-delta", "nan"], "--confirm-delta nan: must be")):
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
