"""The weighting studies and the multi-arm comparison: re-runs, statistics, report, no re-training."""

import importlib.util
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from mhtrain.evaluate import document, figures, report
from mhtrain.evaluate.predictions import outcomes
from mhtrain.evaluate.reruns import RERUNS, Arm, rerun_config
from mhtrain.evaluate.stats import contrasts, holm
from mhtrain.study import runner, study_config
from mhtrain.study.analyses import ledger
from mhtrain.study.storage import open_storage
from tests.conftest import ROOT

ARMS = ("equal_lr", "uncertainty_lr", "baseline_lr")
SPACE = {"model.optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
         "model.loss_weights.thickness": FloatDistribution(0.0, 2.0),
         "model.loss_weights.smoothness": FloatDistribution(0.0, 2.0)}


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def load_cli():
    """studies/compare.py as a module, so its main runs in this process."""
    spec = importlib.util.spec_from_file_location("compare_cli", ROOT / "studies" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_study(config: str, tiny_overrides: list[str], storage: str) -> optuna.Study:
    study = study_config.load(config, n_trials=2, extra_overrides=[*tiny_overrides, "trainer.max_epochs=1"])
    ostudy, _ = runner.run(study, storage, progress=False)
    return ostudy


def searched_study(name: str, complete: int, pruned: int = 0,
                   keys: tuple[str, ...] = tuple(SPACE)) -> optuna.Study:
    """Study `name` (a config of conf/study, recorded on it as a study run records it) with
    `complete` finished and `pruned` stopped trials, made by hand (in memory): the value rises
    with the thickness weight, so importances can tell."""
    config = study_config.load(name)
    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_metric_names(["val/digit_acc"])
    study.set_user_attr("config", config.to_dict())
    rng = random.Random(0)
    for i in range(complete + pruned):
        drawn = {"model.optimizer.lr": 10 ** rng.uniform(-4, -2),
                 "model.loss_weights.thickness": rng.uniform(0, 2),
                 "model.loss_weights.smoothness": rng.uniform(0, 2)}
        value = 0.8 + 0.05 * drawn["model.loss_weights.thickness"] + 0.01 * rng.random()
        params = {k: drawn[k] for k in keys}
        done = i < complete
        study.add_trial(create_trial(
            params=params, distributions={k: SPACE[k] for k in keys}, value=value if done else None,
            state=TrialState.COMPLETE if done else TrialState.PRUNED,
            intermediate_values={1: value - 0.05, 2: value} if done else {1: value - 0.05},
            user_attrs={"experiment": config.experiment, "seconds": 1.0,
                        "overrides": [*config.overrides, *(f"++{k}={v}" for k, v in params.items()),
                                      f"seed={i}"]}))
    return study


def arm_of(study: optuna.Study, values: list[float]) -> Arm:
    records = [{"test/digit_acc": v, "test/thickness_acc": min(1.0, v + 0.01), "seconds": 1.0, "epochs": 2,
                "train/weight_digit": [1.0, 1.0], "train/weight_thickness": [1.0, 1.0]} for v in values]
    return Arm(study, list(range(len(values))), records)


def few_trial_comparison(complete: int = 1) -> report.Comparison:
    a = arm_of(searched_study("loss_weights", complete, pruned=3), [0.98, 0.93, 0.7363])
    r = arm_of(searched_study("baseline_lr", 2, keys=("model.optimizer.lr",)), [0.97, 0.95, 0.96])
    return report.Comparison([a, r], r, "test/digit_acc", contrasts([a, r], r, "test/digit_acc"), ["x=1"])


@pytest.mark.parametrize(("config", "params", "learned"), [
    ("baseline_lr", {"model.optimizer.lr"}, 0),
    ("equal_lr", {"model.optimizer.lr"}, 0),
    ("uncertainty_lr", {"model.optimizer.lr"}, 3),
    ("loss_weights",
     {"model.optimizer.lr", "model.loss_weights.thickness", "model.loss_weights.smoothness"}, 0),
])
@pytest.mark.slow
def test_each_weighting_study_loads_and_runs(config, params, learned, tiny_overrides, storage,
                                             monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ostudy = run_study(config, tiny_overrides, storage)
    trials = ostudy.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(set(t.params) == params for t in trials)
    base = 421_834 if config == "baseline_lr" else 422_866
    assert {t.user_attrs["params"] for t in trials} == {base + learned}  # one log-variance per head
    # the report names each searched value once, and "fixed" lists only what was not searched
    lines = "\n".join(report.study_items(Arm(ostudy, [0, 1], [{"seconds": 1.0, "epochs": 1},
                                                              {"seconds": 5.0, "epochs": 3}])))
    assert "re-runs: 2, 6 s training, 2.0 epochs on average, 1.5 s per epoch" in lines  # the cost
    for key in params:
        assert lines.count(key) == 1, lines
    assert "summed over trials" not in lines  # solo trials: their times add up to the study's


def test_the_lr_range_is_the_loss_weights_studys():
    lr = {name: next(p for p in study_config.load(name).search_space if p.key == "model.optimizer.lr")
          for name in ("equal_lr", "uncertainty_lr", "loss_weights")}
    assert lr["equal_lr"] == lr["uncertainty_lr"] == lr["loss_weights"]


def test_holm_matches_a_hand_computation():
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.5; then running max
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.6]) == [1.0, 1.0]  # 2 x 0.6 is capped at 1


def test_contrasts_show_welch_beside_the_paired_test_then_holm_over_the_arms():
    ref = [0.90, 0.91, 0.92, 0.91]
    values = {"a": [0.93, 0.945, 0.95, 0.935], "b": [0.90, 0.92, 0.93, 0.91], "r": ref}
    arms = {name: Arm(optuna.create_study(study_name=name), [0, 1, 2, 3],
                      [{"test/digit_acc": v} for v in vs]) for name, vs in values.items()}
    result = contrasts(list(arms.values()), arms["r"], "test/digit_acc")
    assert [c.arm for c in result] == ["a", "b"]

    def welch(x: list[float], y: list[float]) -> float:
        vx, vy = stats.tvar(x) / len(x), stats.tvar(y) / len(y)
        t = (sum(x) / len(x) - sum(y) / len(y)) / math.sqrt(vx + vy)
        df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
        return 2 * stats.t.sf(abs(t), df)

    pa, pb = welch(values["a"], ref), welch(values["b"], ref)
    assert pa < pb
    assert [c.welch.p for c in result] == pytest.approx([pa, pb])
    assert [c.welch.p_holm for c in result] == pytest.approx([2 * pa, max(2 * pa, pb)])
    assert result[0].diff == pytest.approx(0.03)
    assert result[0].welch.low < 0.03 < result[0].welch.high
    paired = [stats.ttest_rel(values[n], ref).pvalue for n in "ab"]
    assert [c.paired.p for c in result] == pytest.approx(paired)
    assert result[0].sentence().startswith("a improves test/digit_acc compared with r: 94.00% vs 91.00%")
    assert "makes no significant difference to test/digit_acc" in result[1].sentence()
    assert "paired over 4 shared seeds" in result[1].sentence()
    assert "over 2 comparisons;" in result[1].sentence()


def test_a_pair_beside_the_reference_joins_the_same_holm_family():
    """`--pair a:b`: a − b seed by seed, judged with the contrasts against the reference."""
    ref = [0.90, 0.91, 0.92, 0.91]
    values = {"a": [0.93, 0.945, 0.95, 0.935], "b": [0.90, 0.92, 0.93, 0.91], "r": ref}
    arms = {name: Arm(optuna.create_study(study_name=name), [0, 1, 2, 3],
                      [{"test/digit_acc": v} for v in vs]) for name, vs in values.items()}
    result = contrasts(list(arms.values()), arms["r"], "test/digit_acc", [("a", "b")])
    assert [(c.arm, c.reference, c.label("r")) for c in result] == [
        ("a", "r", "a"), ("b", "r", "b"), ("a", "b", "a − b")]
    raw = [stats.ttest_rel(values[x], values[y]).pvalue for x, y in (("a", "r"), ("b", "r"), ("a", "b"))]
    assert [c.paired.p for c in result] == pytest.approx(raw)
    assert [c.paired.p_holm for c in result] == pytest.approx(holm(raw)) and {c.family for c in result} == {3}
    assert result[2].differences == pytest.approx([0.03, 0.025, 0.02, 0.025])
    assert result[2].sentence().startswith("a improves test/digit_acc compared with b: 94.00% vs 91.50%")


def test_the_report_leaves_out_figures_the_trials_cannot_support(tmp_path, capfd):
    comparison = few_trial_comparison(complete=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md, html = report.write(tmp_path, comparison, "few trials")
    assert not [str(w.message) for w in caught]  # nothing Optuna or its estimators say reaches the console
    assert "Warning" not in capfd.readouterr().err
    text = md.read_text()
    assert ("*Left out: Parameter importances: loss_weights: 1 completed trial, fewer than the "
            f"{figures.MIN_COMPLETE} an importance estimate needs.*") in text
    assert "*Left out: Loss-weight landscape: loss_weights: 1 completed trial; a contour" in text
    assert text.count("Left out:") == 2  # the seeds, weights, history and epochs figures are drawn
    page = html.read_text()
    assert "Left out: Parameter importances" in page and "landscape" not in page.split("Left out")[0]

    # with enough completed trials the same study gets both figures, importances not all equal
    enough = searched_study("loss_weights", figures.MIN_COMPLETE)
    drawn = figures.importances(enough)
    assert drawn.fig is not None
    assert len({round(x, 6) for x in drawn.fig.data[0].x}) == 3
    assert figures.landscape(enough, list(SPACE)[1:]).fig is not None


def test_the_report_is_one_small_page_sharing_one_plotly_and_showing_no_markdown(tmp_path):
    md, html = report.write(tmp_path / "r", few_trial_comparison(), "small")
    page = html.read_text()
    scripts = list((tmp_path / "r").glob("plotly-*.min.js"))
    assert len(scripts) == 1 and scripts[0].stat().st_size > 3_000_000
    assert page.count(f"<script src='{scripts[0].name}'>") == 1 and page.count("Plotly.newPlot") >= 4
    assert html.stat().st_size < 300_000, html.stat().st_size  # it was 4.9 MB with plotly inside
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "`" not in page and "<code>x=1</code>" in page and "<code>model.optimizer.lr</code>" in page
    assert "plain mean over seeds" in page and "plain mean over seeds" in md.read_text()
    assert "120." not in md.read_text()  # the interval, past 100%, is cut at 100
    # one file to send around, on request: plotly.js inside, once
    _, single = report.write(tmp_path / "s", few_trial_comparison(), "single", inline_js=True)
    assert not list((tmp_path / "s").glob("*.js")) and single.read_text().count("plotly.js v") <= 2
    assert single.stat().st_size > 3_000_000
    assert document.inline("a `b<c>` d") == "a <code>b&lt;c&gt;</code> d"


@pytest.mark.slow
def test_multi_arm_compare_writes_the_report_and_a_second_run_retrains_nothing(
        tiny_overrides, storage, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for config in ARMS:
        run_study(config, tiny_overrides, storage)
    # re-runs on 64 images: the seeds then differ, so the statistics are defined
    fidelity = ["trainer.max_epochs=2", "data.train_subset=64"]
    args = ["--storage", storage, "--seeds", "2", "--arms", *ARMS, "--reference", "baseline_lr",
            "--name", "weighting", *fidelity]
    cli = load_cli()
    # what a re-run killed mid-training leaves in its folder: the next run starts it afresh
    stale = Path(rerun_config(optuna.load_study(study_name="equal_lr", storage=open_storage(storage)),
                              1000, fidelity).paths.output_dir)
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "epoch=7.ckpt").write_text("from the killed run")
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert not (stale / "checkpoints" / "epoch=7.ckpt").exists() and (stale / "config.yaml").exists()
    assert first.count("(trained") == 6 and "(stored)" not in first
    order = [line.split(" seed ")[1].split(":")[0] for line in first.splitlines() if "(trained" in line]
    assert order == [order[0]] * 3 + [order[3]] * 3  # seed by seed across the arms: a cut leaves them even
    out = tmp_path / "runs" / "reports" / "weighting"
    md = (out / "report.md").read_text()
    assert ("| arm | seeds | test digit acc (%) | test thickness acc (%) | test smoothness acc (%) |"
            in md)
    assert "| baseline_lr (reference) | 2 |" in md and "| – | – |" in md
    assert "| arm | re-run s per epoch | × baseline_lr |" in md and "| baseline_lr | " in md
    (cost,) = [line.strip("| ").split(" | ") for line in md.splitlines()
               if line.startswith("| uncertainty_lr | ") and line.count("|") == 4]
    assert float(cost[1]) > 0 and float(cost[2]) > 0  # its s per epoch, and that against the reference's
    assert ("| arm | difference (pp) | paired 95% CI, unadjusted (pp) | paired p | paired Holm-adjusted p "
            "| Welch 95% CI, unadjusted (pp) | Welch p | Welch Holm-adjusted p | r over seeds |") in md
    for arm in ("equal_lr", "uncertainty_lr"):
        assert f"- {arm} " in md and "compared with baseline_lr" in md
    assert "paired over 2 shared seeds" in md and "over 2 comparisons;" in md and "nan" not in md
    html = (out / "report.html").read_text()
    for title in ("Test accuracy per seed", "Loss weights over epochs", "Optimization history",
                  "Intermediate values per epoch: uncertainty_lr"):
        assert title in html
    assert "Left out" not in html  # one searched value per arm: no importances, no landscape

    reruns = optuna.load_study(study_name="uncertainty_lr", storage=open_storage(storage)).user_attrs[RERUNS]
    assert len(reruns) == 2
    for record in reruns.values():
        assert 0.0 <= record["test/digit_acc"] <= 1.0
        assert len(record["train/weight_digit"]) == record["epochs"] == 2
        assert record["train/weight_digit"][0] != record["train/weight_digit"][1]  # learned

    assert cli.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("(stored)") == 6 and "(trained" not in again
    verdicts = lambda out: [line for line in out.splitlines()  # noqa: E731
                            if "(the reference):" in line or "compared with baseline_lr" in line]
    assert len(verdicts(first)) == 3 and verdicts(again) == verdicts(first)

    # the original two-arm options test one of these contrasts again on the same runs: a re-test,
    # refused unless labelled a follow-up of the family that tested it first
    two_arm = ["--storage", storage, "--seeds", "2", "--multitask", "equal_lr", "--baseline", "baseline_lr",
               *fidelity]
    assert cli.main(two_arm) == 2
    assert "is a re-test; label it --follow-up weighting" in capsys.readouterr().err
    assert cli.main([*two_arm, "--follow-up", "weighting"]) == 0
    two = capsys.readouterr().out
    assert "(trained" not in two
    alone, among = verdicts(two)[0], verdicts(first)[0]
    assert alone.startswith("equal_lr ") and "over 1 comparison;" in alone
    assert alone.split(", Holm")[0] == among.split(", Holm")[0]  # only the adjustment differs
    text = (tmp_path / "runs" / "reports" / "equal_lr_vs_baseline_lr" / "report.md").read_text()
    assert "a follow-up of family `weighting`" in text


@pytest.mark.slow  # over 10 s: the full tier
def test_more_seeds_after_a_look_are_refused_unless_declared_and_then_judged_as_a_later_look(
        tiny_overrides, storage, monkeypatch, tmp_path, capsys):
    """The issue's `--seeds 10` after `--seeds 5`, here 4 after 3, on real tiny re-runs."""
    monkeypatch.chdir(tmp_path)
    for config in ("equal_lr", "baseline_lr"):
        run_study(config, tiny_overrides, storage)
    base = ["--storage", storage, "--arms", "equal_lr", "--reference", "baseline_lr", "--name", "q",
            "trainer.max_epochs=1", "data.train_subset=64"]
    cli = load_cli()
    assert cli.main([*base, "--seeds", "3"]) == 0
    assert "paired over 3 shared seeds" in capsys.readouterr().out
    assert cli.main([*base, "--seeds", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: equal_lr vs baseline_lr was analysed on seeds 1000–1002 in family `q`")
    assert "seeds 1000–1003 adds seeds to it; declare a later look with --extend" in err
    study = optuna.load_study(study_name="equal_lr", storage=open_storage(storage))
    assert len(study.user_attrs[RERUNS]) == 3  # refused before anything trained

    assert cli.main([*base, "--seeds", "4", "--extend"]) == 0
    out = capsys.readouterr().out
    assert "a later look, sequential over 4 shared seeds: anytime-valid 95% interval" in out
    md = (tmp_path / "runs" / "reports" / "q" / "report.md").read_text()
    assert "This analysis: look 2 of family `q`, declared with --extend" in md
    assert "anytime-valid p" in md and "compare, family `q`, look 1: seeds 1000–1002" in md
    for name in ("equal_lr", "baseline_lr"):
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
        looks = ledger(study)
        assert [(e.look, len(e.units), e.test.startswith("anytime")) for e in looks] == [
            (1, 3, False), (2, 4, True)]
    assert cli.main([*base, "--seeds", "4", "--extend"]) == 0  # a repeat: shown, not recorded again
    md = (tmp_path / "runs" / "reports" / "q" / "report.md").read_text()
    assert "a repeat of the analysis recorded" in md
    assert len(ledger(study)) == 2

    # every re-run stored its per-image test outcomes: they add up to its accuracy
    for record in study.user_attrs[RERUNS].values():
        correct = outcomes(record, "test/digit_acc")
        assert record["test/images"] == 200 and correct.mean() == pytest.approx(record["test/digit_acc"])


@pytest.mark.slow  # 16 tiny fits and 4 tiny searches: about a minute on 2 shared cores
def test_study_seeds_repeat_each_search_and_the_report_splits_the_variance(
        tiny_overrides, storage, monkeypatch, tmp_path, capsys):
    """--study-seeds 2 on tiny data: each arm searched again with study seed 1, each answer
    re-trained on its own 2 seeds, the verdict over the 2 searches, the variance split reported."""
    monkeypatch.chdir(tmp_path)
    for config in ("equal_lr", "baseline_lr"):
        run_study(config, tiny_overrides, storage)
    args = ["--storage", storage, "--arms", "equal_lr", "--reference", "baseline_lr", "--name", "s",
            "--seeds", "2", "--study-seeds", "2", "trainer.max_epochs=1", "data.train_subset=64"]
    cli = load_cli()
    # the repeats must be the same search as the arms': their fidelity and budget, given again
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--study-seeds: study equal_lr was searched otherwise" in err
    assert "overrides: now without" in err and "n_trials: 2 -> 20" in err
    search = [*tiny_overrides, "trainer.max_epochs=1"]
    args += ["--n-trials", "2", *(a for o in search for a in ("--search", o))]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(trained") == 8 and "paired over 2 searches" in out
    ostorage = open_storage(storage)
    for arm in ("equal_lr", "baseline_lr"):
        again = optuna.load_study(study_name=f"{arm}@study_seed:1", storage=ostorage)
        first = optuna.load_study(study_name=arm, storage=ostorage)
        assert again.user_attrs["config"]["seed"] == first.user_attrs["config"]["seed"] + 1
        assert again.user_attrs["config"]["overrides"] == first.user_attrs["config"]["overrides"]
        assert len(again.trials) == len(first.trials) == 2
        assert sorted(k.split("|")[1] for k in again.user_attrs[RERUNS]) == ["seed1002", "seed1003"]
        assert [e.units for e in ledger(again)] == [((0, 1000), (0, 1001), (1, 1002), (1, 1003))]
    md = (tmp_path / "runs" / "reports" / "s" / "report.md").read_text()
    assert "| equal_lr | 2 × 2 |" in md and "re-trained for each of its 2 searches, 2 seeds per search" in md
    assert "## Where the uncertainty comes from" in md and "| equal_lr − baseline_lr |" in md
    split = next(line for line in md.splitlines() if line.startswith("| equal_lr − baseline_lr |"))
    assert split.count("%)") >= 2 and " to " in split.split("|")[-2]  # shares and a bootstrap interval
    assert "study seeds 0–1 × seeds 1000–1003" in md
    # the cost is the runs': seconds over epochs of all 4 runs, not of the 2 searches' pooled means
    runs = [r for arm in ("equal_lr", "equal_lr@study_seed:1") for r in
            optuna.load_study(study_name=arm, storage=ostorage).user_attrs[RERUNS].values()]
    per_epoch = sum(r["seconds"] for r in runs) / sum(r["epochs"] for r in runs)
    cost = next(line for line in md.split("## Cost", 1)[1].splitlines() if line.startswith("| equal_lr | "))
    assert float(cost.split("|")[2]) == pytest.approx(per_epoch, abs=0.006)
    assert "re-runs: 4, " in md and f"{per_epoch:.1f} s per epoch" in md

    assert cli.main(args) == 0  # stored: nothing searched or trained again, a repeat in the ledger
    again = capsys.readouterr().out
    assert "(trained" not in again and again.count("(stored)") == 8


@pytest.mark.parametrize(("args", "message"), [
    (["--arms", "nope", "--reference", "baseline_lr"], "no such file"),  # a mistyped storage path
    (["--arms", "a", "a"], "named twice"),
    (["--seeds", "1"], "need at least 2"),
    (["--search", "trainer.max_epochs=1"], "set the searches of a sweep (--over) or of repeated searches"),
    (["--per-parameter"], "--per-parameter applies to a sweep only"),
    (["--study-seeds", "0"], "--study-seeds 0: must be >= 1"),
    (["--study-seeds", "2", "--over", "data.train_subset=10,20"], "--study-seeds applies to a comparison"),
    (["--arms", "lr", "--pair", "lr:nope"], "--pair lr:nope: name two different arms of --arms"),
    (["--arms", "lr", "--pair", "lr:lr"], "--pair lr:lr: name two different arms"),
])
def test_compare_refuses_bad_input_in_one_line(args, message, storage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert load_cli().main(["--storage", storage, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_the_command_line_exits_2_in_one_line(storage, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "compare.py"), "--storage", storage,
                           "--arms", "a", "a"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --arms a a baseline_lr: an arm is named twice"]


@pytest.mark.parametrize("command", [["studies/compare.py", "--arms", "nosuch"],
                                     ["-m", "mhtrain.study", "export", "nosuch"]])
def test_a_command_that_opens_a_storage_says_only_its_line(command, storage, tmp_path):
    """Opening a storage with heartbeats made Optuna warn, in every command, that they are
    experimental: the error line must be all a user sees."""
    optuna.create_study(study_name="baseline_lr", storage=storage)
    script = [str(ROOT / command[0]), *command[1:]] if command[0].endswith(".py") else command
    proc = subprocess.run([sys.executable, *script, "--storage", storage], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "nosuch" in proc.stderr
