"""The swept comparison: statistics over all values at once, the report, bad input before any
training, and a sweep that resumes and re-trains nothing once stored."""

import optuna
import pytest
import torch
from hydra.utils import instantiate
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.evaluate import sweep, sweep_report
from mhtrain.evaluate.reruns import RERUN_MODE, RERUNS, Arm
from mhtrain.evaluate.stats import contrast, holm
from mhtrain.study.storage import open_storage
from tests.test_compare import load_cli

METRIC = "test/digit_acc"
OVER = sweep.Over("data.train_subset", ("500", "null"))
POINTS = [sweep.Point("500", "500", 500.0), sweep.Point("null", "55,000 (all)", 55_000.0)]
VALUES = {  # per value, per arm: test accuracy of seeds 0..3
    "500": {"loss_weights": [0.937, 0.936, 0.944, 0.933], "equal_lr": [0.925, 0.931, 0.929, 0.922],
            "baseline_lr": [0.920, 0.918, 0.927, 0.915]},
    "null": {"loss_weights": [0.9875, 0.9881, 0.9869, 0.9878], "equal_lr": [0.9879, 0.9870, 0.9874, 0.9866],
             "baseline_lr": [0.9876, 0.9872, 0.9880, 0.9871]},
}


def stored_arm(name: str, value: str) -> Arm:
    """An arm as a sweep stores it: a study with its best trial, and one record per seed."""
    study = optuna.create_study(study_name=f"{name}@train_subset:{value}", direction="maximize")
    lr = {"model.optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study.add_trial(create_trial(params={"model.optimizer.lr": 0.001}, distributions=lr, value=0.9,
                                 state=TrialState.COMPLETE))
    values = VALUES[value][name]
    return Arm(study, list(range(len(values))), [{METRIC: v} for v in values], label=name)


@pytest.fixture
def result() -> sweep_report.SweepResult:
    arms = [[stored_arm(a, p.value) for a in ("loss_weights", "equal_lr", "baseline_lr")] for p in POINTS]
    return sweep_report.analyse(OVER, POINTS, arms, "baseline_lr", METRIC)


def test_holm_adjusts_over_every_comparison_of_the_sweep(result):
    raw = [contrast(a, VALUES[v][a], "baseline_lr", VALUES[v]["baseline_lr"], METRIC).paired.p
           for v in ("500", "null") for a in ("loss_weights", "equal_lr")]
    got = [c for cs in result.contrasts for c in cs]
    assert [c.arm for c in got] == ["loss_weights", "equal_lr"] * 2
    assert result.family == 4 == (3 - 1) * 2 and {c.family for c in got} == {4}
    assert [c.paired.p for c in got] == pytest.approx(raw)
    assert [c.paired.p_holm for c in got] == pytest.approx(holm(raw))
    assert got[0].paired.p_holm != pytest.approx(holm(raw[:2])[0])  # not Holm within one value
    assert got[0].significant and not got[2].significant


def test_the_table_the_sentences_and_the_figure(result, tmp_path):
    rows = sweep_report.table(result)
    assert rows[0] == ["train_subset", "arm", f"{METRIC} (%) [95% t CI]",
                       "vs baseline_lr (pp) [paired 95% CI, unadjusted]", "paired p",
                       "paired Holm-adjusted p",
                       "Welch 95% CI, unadjusted (pp)", "Welch p", "r over seeds"]
    assert [r[:2] for r in rows[1:]] == [[p, a] for p in ("500", "55,000 (all)")
                                         for a in ("loss_weights", "equal_lr", "baseline_lr")]
    assert rows[1][2].startswith("93.75 [")  # the plain mean, the one the difference subtracts
    assert rows[1][3].startswith("+1.75 [")
    assert rows[3][3] == "reference"
    first = sweep_report.sentence(result, 0)
    assert first.startswith("With 500 training images (`data.train_subset=500`), against baseline_lr at "
                            "92.00% test/digit_acc: loss_weights 93.75%, +1.75 pp (paired unadjusted 95% CI")
    assert ": improves; Welch p = " in first
    assert "Holm over all 4 comparisons of the sweep, 4 seeds per arm." in first
    second = sweep_report.sentence(result, 1)
    assert second.startswith("With 55,000 training images (`data.train_subset=null`)")

    acc, diff = (f.fig for f in sweep_report.figures(result))
    assert acc.layout.xaxis.type == "log" and list(acc.layout.xaxis.ticktext) == ["500", "55,000 (all)"]
    assert [t.name for t in acc.data] == ["loss_weights", "equal_lr", "baseline_lr"]
    for trace in acc.data:  # one point per value, near its x, every interval inside 0-100%
        assert [x / p.x for x, p in zip(trace.x, POINTS, strict=True)] == pytest.approx([1, 1], abs=0.06)
        assert all(y - lo >= 0 and y + hi <= 100
                   for y, lo, hi in zip(trace.y, trace.error_y.arrayminus, trace.error_y.array, strict=True))
    assert [t.name for t in diff.data] == ["loss_weights", "equal_lr"]

    setup = sweep_report.describe(result, "12 trials", ["trainer.max_epochs=3"], [], 55_000)
    md, html = sweep_report.write(tmp_path, result, setup, "sweep")
    text = md.read_text()
    assert "| train_subset | arm |" in text and "`null` means the full training set: 55,000 images" in text
    assert "all 4 comparisons of the sweep at once (2 contrasts x 2 values)" in text
    page = html.read_text()
    assert "`" not in page and page.count("Plotly.newPlot") == 2 and html.stat().st_size < 100_000


def test_a_pair_is_judged_at_every_value_in_the_sweeps_family():
    arms = [[stored_arm(a, p.value) for a in ("loss_weights", "equal_lr", "baseline_lr")] for p in POINTS]
    r = sweep_report.analyse(OVER, POINTS, arms, "baseline_lr", METRIC, pairs=[("loss_weights", "equal_lr")])
    assert r.family == 6 and [[c.label("baseline_lr") for c in cs] for cs in r.contrasts] == [
        ["loss_weights", "equal_lr", "loss_weights − equal_lr"]] * 2
    vs = (("loss_weights", "baseline_lr"), ("equal_lr", "baseline_lr"), ("loss_weights", "equal_lr"))
    raw = [contrast(a, VALUES[v][a], b, VALUES[v][b], METRIC).paired.p
           for v in ("500", "null") for a, b in vs]
    assert [c.paired.p_holm for cs in r.contrasts for c in cs] == pytest.approx(holm(raw))
    rows = sweep_report.table(r)
    assert [row[:3] for row in rows[4:5]] == [["500", "loss_weights − equal_lr", ""]]
    assert rows[4][3].startswith("+1.07 [")
    assert "; loss_weights − equal_lr +1.07 pp (paired" in sweep_report.sentence(r, 0)
    seeds = sweep_report.seed_table(r)
    assert [row[1] for row in seeds if row[0] == "500"][-1] == "loss_weights − equal_lr (pp)"
    assert "all 6 comparisons of the sweep at once (3 contrasts x 2 values)" in " ".join(
        sweep_report.describe(r, "12 trials", [], [], None))


@pytest.mark.parametrize(("text", "message"), [
    ("data.train_subset", "give one key and its values"),
    ("=1,2", "give one key and its values"),
    ("data.train_subset=500,,null", "a value is empty"),
    ("data.train_subset=500,500", "given twice"),
])
def test_over_is_one_key_and_its_values(text, message):
    with pytest.raises(ConfigError, match=message):
        sweep.parse_over(text)
    assert sweep.parse_over("data.train_subset=500, null") == OVER


def search_args(tiny_overrides: list[str]) -> list[str]:
    return [arg for o in [*tiny_overrides, "trainer.max_epochs=1"] for arg in ("--search", o)]


def test_help_states_the_sweep_and_its_wall_time():
    text = load_cli().parser().format_help()
    assert "--over data.train_subset=500,2000,10000,null" in text and "2 h 10 min on a 2-core CPU" in text


@pytest.mark.parametrize(("over", "extra", "message"), [
    ("data.nope=1,2", [], "--over data.nope: no such key in experiment"),
    ("data.train_subset=100,-5", [], "--over data.train_subset=-5 (arm equal_lr): data.train_subset=-5"),
    ("data.train_subset=100,600", [], "data.train_subset=600 is more than the 500 training images"),
    ("data.train_subset=100", ["--n-trials", "0"], "--n-trials 0: must be >= 1"),
    ("data.train_subset=100", ["data.train_subset=50"], "is swept; do not set it in the re-run overrides"),
    ("data.train_subset=100", ["--search", "data.train_subset=50"], "is swept; do not set it in --search"),
])
def test_bad_sweep_input_is_one_line_and_exit_2_before_anything_is_trained(
        over, extra, message, tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "optuna.db"
    code = load_cli().main(["--storage", f"sqlite:///{db}", "--arms", "equal_lr", "baseline_lr",
                            "--over", over, *search_args(tiny_overrides), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert message in err, err
    assert not db.exists() and not (tmp_path / "runs").exists()  # nothing created, nothing trained


@pytest.mark.slow
def test_a_sweep_resumes_and_a_second_run_retrains_nothing(tiny_overrides, tmp_path, monkeypatch, capsys):
    """Two arms, two sizes, two seeds, two trials of one epoch per study; the first run is cut
    short at one value (as an interrupted sweep is), the second completes it, the third trains
    nothing."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cli = load_cli()

    def run(values: str) -> str:
        args = ["--storage", storage, "--arms", "equal_lr", "baseline_lr", "--seeds", "2", "--n-trials", "2",
                "--name", "sizes", "--over", f"data.train_subset={values}", *search_args(tiny_overrides)]
        assert cli.main(args) == 0
        return capsys.readouterr().out

    first = run("40")
    assert first.count("(trained") == 4 and first.count("2 trial(s) searched now, 0 stored") == 2
    second = run("40,80")
    assert second.count("(stored)") == 4 and second.count("(trained") == 4
    assert "re-runs: 4 trained now" in second and "search: 4 trials run now, 4 stored" in second
    third = run("40,80")
    assert third.count("(stored)") == 8 and "(trained" not in third
    assert third.count("0 trial(s) searched now, 2 stored") == 4 and "re-runs: 0 trained now" in third

    ostorage = open_storage(storage)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(ostorage))
    assert names == [f"{a}@train_subset:{v}" for a in ("baseline_lr", "equal_lr") for v in (40, 80)]
    for name in names:
        study = optuna.load_study(study_name=name, storage=ostorage)
        assert len(study.trials) == 2 and len(study.user_attrs[RERUNS]) == 2
        value = name.rsplit(":", 1)[1]
        assert all(f"data.train_subset={value}" in key for key in study.user_attrs[RERUNS])

    report = tmp_path / "runs" / "reports" / "sizes"
    md = (report / "report.md").read_text()
    assert "| train_subset | arm |" in md and md.count("\n- With ") == 2
    # the seeded runs differ from seed to seed here, so every comparison counts in Holm's family:
    # (2 arms - 1) x 2 values
    sentences = [line for line in third.splitlines() if line.startswith("With ")]
    assert [s.split(" training images")[0] for s in sentences] == ["With 40", "With 80"]
    assert all("Holm over all 2 comparisons of the sweep, 2 seeds per arm." in s for s in sentences)
    page = (report / "report.html").read_text()
    assert "test/digit_acc against data.train_subset" in page and list(report.glob("plotly-*.min.js"))


def test_a_subset_sweeps_reruns_train_on_a_subset_drawn_per_seed(tiny_overrides, tmp_path):
    over = sweep.parse_over("data.train_subset=100")
    p = sweep.plan(over, ["equal_lr", "baseline_lr"], [*tiny_overrides, "trainer.max_epochs=1"], [],
                   (1000, 1001), 1, f"sqlite:///{tmp_path / 'optuna.db'}")
    cell = p.cells[0]
    subsets = []
    for seed in p.seeds:
        overrides = [*cell.study.overrides, *cell.rerun, f"seed={seed}", *RERUN_MODE]
        cfg = compose(cell.study.experiment, overrides)
        assert cfg.data.subset_seed == seed
        dm = instantiate(cfg.data)
        subsets.append(dm.split_indices(len(dm.load("train")[0]))[0])
    assert len(subsets[0]) == len(subsets[1]) == 100 and not torch.equal(*subsets)
    search = compose(cell.study.experiment, cell.study.overrides)
    assert search.data.get("subset_seed") is None  # the search keeps one subset for every trial


@pytest.mark.slow  # 12 s: a real search per parameter; the sweep's other checks stay fast
def test_per_parameter_gives_every_searched_key_the_same_budget(tiny_overrides, tmp_path):
    over = sweep.parse_over("data.train_subset=100,200")
    arms = ["loss_weights", "equal_lr", "baseline_lr"]
    budgets = {}
    for per in (False, True):
        p = sweep.plan(over, arms, tiny_overrides, [], (1000, 1001), 4, f"sqlite:///{tmp_path / 'o.db'}", per)
        budgets[per] = {(c.arm, c.point.value): c.study.n_trials for c in p.cells}
    assert set(budgets[False].values()) == {4}
    assert budgets[True] == {(a, v): 12 if a == "loss_weights" else 4 for a in arms for v in ("100", "200")}
