"""The weighting studies and the multi-arm comparison: re-runs, statistics, report, no re-training."""

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from mhtrain.study import report, runner, space
from mhtrain.study.compare import RERUNS, Arm, contrasts, holm, mean_ci
from mhtrain.study.storage import open_storage
from tests.conftest import ROOT

ARMS = ("equal_lr", "uncertainty_lr", "baseline_lr")


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def run_study(config: str, tiny_overrides: list[str], storage: str) -> optuna.Study:
    study = space.load(config, n_trials=2, extra_overrides=[*tiny_overrides, "trainer.max_epochs=1"])
    ostudy, _ = runner.run(study, storage, progress=False)
    return ostudy


@pytest.mark.parametrize(("config", "params", "learned"), [
    ("baseline_lr", {"model.optimizer.lr"}, 0),
    ("equal_lr", {"model.optimizer.lr"}, 0),
    ("uncertainty_lr", {"model.optimizer.lr"}, 3),
    ("loss_weights",
     {"model.optimizer.lr", "model.loss_weights.thickness", "model.loss_weights.smoothness"}, 0),
])
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
    lines = "\n".join(report.study_lines(Arm(ostudy, [0], [{"seconds": 1.0, "epochs": 1}])))
    for key in params:
        assert lines.count(key) == 1, lines


def test_the_lr_range_is_the_loss_weights_studys():
    lr = {name: next(p for p in space.load(name).search_space if p.key == "model.optimizer.lr")
          for name in ("equal_lr", "uncertainty_lr", "loss_weights")}
    assert lr["equal_lr"] == lr["uncertainty_lr"] == lr["loss_weights"]


def test_holm_matches_a_hand_computation():
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.5; then running max
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.6]) == [1.0, 1.0]  # 2 x 0.6 is capped at 1
    adjusted = holm([math.nan, 0.02, 0.03])  # an undefined p does not count in m
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.04])


def test_mean_ci_is_student_t():
    mean, low, high = mean_ci([0.90, 0.92, 0.94])
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, df=2) x sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((0.92, 0.92 - half, 0.92 + half), rel=1e-6)
    assert mean_ci([0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_contrasts_are_welch_then_holm_over_the_arms():
    ref = [0.90, 0.91, 0.92, 0.91]
    values = {"a": [0.93, 0.94, 0.95, 0.94], "b": [0.90, 0.92, 0.93, 0.91], "r": ref}
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
    assert [c.p for c in result] == pytest.approx([pa, pb])
    assert [c.p_holm for c in result] == pytest.approx([2 * pa, max(2 * pa, pb)])
    assert result[0].diff == pytest.approx(0.03)
    assert result[0].low < 0.03 < result[0].high
    assert result[0].sentence().startswith("a improves test/digit_acc compared with r: 94.00% vs 91.00%")
    assert "makes no significant difference" in result[1].sentence()


def compare_cli(storage: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "studies" / "compare.py"), "--storage", storage,
                           "--seeds", "2", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_multi_arm_compare_writes_the_report_and_a_second_run_retrains_nothing(
        tiny_overrides, storage, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for config in ARMS:
        run_study(config, tiny_overrides, storage)
    # re-runs on 64 images: the seeds then differ, so the statistics are defined
    fidelity = ["trainer.max_epochs=2", "data.train_subset=64"]
    args = ["--arms", *ARMS, "--reference", "baseline_lr", "--name", "weighting", *fidelity]
    first = compare_cli(storage, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("(trained)") == 6 and "(stored)" not in first.stdout
    report = tmp_path / "runs" / "reports" / "weighting"
    md = (report / "report.md").read_text()
    assert ("| arm | seeds | test digit acc (%) | test thickness acc (%) | test smoothness acc (%) |"
            in md)
    assert "| baseline_lr (reference) | 2 |" in md and "| – | – |" in md
    assert "| arm | difference (pp) | 95% CI (pp) | Welch p | Holm-adjusted p |" in md
    for arm in ("equal_lr", "uncertainty_lr"):
        assert f"- {arm} " in md and "compared with baseline_lr" in md
    assert "over 2 comparisons; 2 vs 2 seeds" in md and "nan" not in md
    html = (report / "report.html").read_text()
    for title in ("Test accuracy per seed", "Loss weights over epochs", "Optimization history",
                  "Intermediate values per epoch: uncertainty_lr"):
        assert title in html

    reruns = optuna.load_study(study_name="uncertainty_lr", storage=open_storage(storage)).user_attrs[RERUNS]
    assert len(reruns) == 2
    for record in reruns.values():
        assert 0.0 <= record["test/digit_acc"] <= 1.0
        assert len(record["train/weight_digit"]) == record["epochs"] == 2
        assert record["train/weight_digit"][0] != record["train/weight_digit"][1]  # learned

    again = compare_cli(storage, *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(stored)") == 6 and "(trained)" not in again.stdout
    verdicts = lambda out: [line for line in out.splitlines() if "seeds)." in line]  # noqa: E731
    assert len(verdicts(first.stdout)) == 3 and verdicts(again.stdout) == verdicts(first.stdout)

    # the original two-arm options are the same comparison with one arm
    two = compare_cli(storage, "--multitask", "equal_lr", "--baseline", "baseline_lr", *fidelity,
                      cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(trained)" not in two.stdout
    alone, among = verdicts(two.stdout)[0], verdicts(first.stdout)[0]
    assert alone.startswith("equal_lr ") and "over 1 comparison;" in alone
    assert alone.split(", Holm")[0] == among.split(", Holm")[0]  # only the adjustment differs
    assert (tmp_path / "runs" / "reports" / "equal_lr_vs_baseline_lr" / "report.md").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--arms", "nope", "--reference", "baseline_lr"], "no such file"),  # a mistyped storage path
    (["--arms", "a", "a"], "named twice"),
    (["--seeds", "1"], "need at least 2"),
])
def test_compare_refuses_bad_input_in_one_line(args, message, storage, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "compare.py"), "--storage", storage, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
