"""`make calibrate`: the A/A and A/B rates counted as compare's test counts them, on stored runs
whose truth is known, and end to end on tiny real trainings (resumed, refused when the plan
changes)."""

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy import stats

from mhtrain.evaluate import calibrate
from tests.conftest import ROOT


def load_cli():
    spec = importlib.util.spec_from_file_location("calibrate_cli", ROOT / "studies" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic(tmp_path: Path, reps: int, seeds: int, extend_to: int, handicap: float) -> tuple:
    """A store of runs drawn as training noise is modelled: a seed effect shared by A and B at the
    same seed, independent noise per run, B lower by `handicap`."""
    plan = calibrate.Plan("cnn_mnist", [], ["model.optimizer.lr=0.0001"], reps, seeds, extend_to, 0)
    store = calibrate.Store.open(tmp_path / "c", plan)
    rng = random.Random(0)
    for rep in range(reps):
        shared = {s: rng.gauss(0, 0.002) for s in plan.seeds_of(rep, "A") + plan.seeds_of(rep, "A'")}
        for arm in ("A", "A'", "B"):
            for s in plan.seeds_of(rep, arm):
                value = 0.98 + shared[s] + rng.gauss(0, 0.001) - (handicap if arm == "B" else 0.0)
                store.add({"arm": arm, "seed": s, "value": value, "seconds": 1.0})
    return plan, calibrate.Store.open(tmp_path / "c", plan)  # read back as a resumed run reads it


def test_the_rates_are_compares_verdicts_counted(tmp_path):
    plan, store = synthetic(tmp_path, reps=300, seeds=5, extend_to=10, handicap=0.0015)
    r = calibrate.analyse(plan, store, "test/digit_acc")
    manual = 0
    for rep in range(300):
        a = calibrate.values(plan, store, rep, "A", 5)
        b = calibrate.values(plan, store, rep, "A'", 5)
        manual += stats.ttest_rel(b, a).pvalue < 0.05
    assert r["aa"].hits == manual and r["aa"].reps == 300
    low, high = r["aa"].ci()
    assert low <= 0.05 <= high  # a correct test on the null it assumes
    assert r["ab"].share == pytest.approx(r["predicted"], abs=0.08)  # detections where power says
    assert r["planted"] == pytest.approx(-0.0015, abs=0.0002) and r["ab_wrong_way"].hits == 0
    assert r["peeking"].share > r["aa"].share  # two fixed looks find more than one
    assert r["sequential"].share <= r["extend"].share <= r["peeking"].share
    assert r["sequential"].ci()[0] <= 0.05
    text = calibrate.lines(plan, r)
    assert "at most 5% within its binomial margin: yes" in text[1] and "(--extend) in" in text[3]


def test_a_torn_last_line_trains_again_and_another_plan_is_refused(tmp_path):
    plan, store = synthetic(tmp_path, reps=2, seeds=2, extend_to=2, handicap=0.0)
    with (tmp_path / "c" / "runs.jsonl").open("a") as f:
        f.write('{"arm": "A", "se')  # a kill mid-write
    assert len(calibrate.Store.open(tmp_path / "c", plan).runs) == len(store.runs) == 12
    more = calibrate.Plan(**{**plan.__dict__, "reps": 5})  # more repetitions continue it
    assert calibrate.complete(more, calibrate.Store.open(tmp_path / "c", more)) == 2
    other = calibrate.Plan(**{**plan.__dict__, "seeds": 3, "extend_to": 3})
    with pytest.raises(calibrate.ConfigError, match="holds a calibration of another plan"):
        calibrate.Store.open(tmp_path / "c", other)


@pytest.mark.slow  # 8 tiny fits, 40 s on 2 shared cores
def test_calibrate_trains_the_arms_on_tiny_data_and_resumes(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = load_cli()
    args = ["--reps", "1", "--seeds", "2", "--extend-to", "3", "--name", "t", *tiny,
            "trainer.max_epochs=1", "data.train_subset=64"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("rep 1/1") == 8  # A and A' at 3 seeds, B at 2
    runs = [json.loads(line) for line in (tmp_path / "runs" / "calibrate" / "t" / "runs.jsonl").open()]
    assert {(r["arm"], r["seed"]) for r in runs} == {
        *(("A", s) for s in (100000, 100001, 100002)), *(("A'", s) for s in (100003, 100004, 100005)),
        ("B", 100000), ("B", 100001)}
    folder = tmp_path / "runs" / "calibrate" / "t" / "runs"
    lr = {r: OmegaConf.load(folder / f"{r}_seed100000" / "config.yaml").model.optimizer.lr
          for r in ("A", "B")}
    assert lr["B"] == pytest.approx(0.1 * lr["A"])  # the planted handicap
    md = (tmp_path / "runs" / "calibrate" / "t" / "report.md").read_text()
    assert "A/A (the same configuration as both arms" in md and "later look, A/A, 2 then 3 seeds" in md
    assert cli.main(args) == 0 and "rep 1/1" not in capsys.readouterr().out  # stored: nothing trains
    assert cli.main([*args[:-2], "trainer.max_epochs=2", "data.train_subset=64"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "holds a calibration of another plan" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--reps", "0"], "--reps 0: must be >= 1"),
    (["--seeds", "1"], "--seeds 1: a paired test needs at least 2"),
    (["--seeds", "5", "--extend-to", "3"], "--extend-to 3: must be at least --seeds 5"),
    (["--name", "../x"], "--name '../x'"),
    (["model.optimizer.lr=-1"], "lr"),
])
def test_bad_input_is_one_line_before_anything_trains(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert load_cli().main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "runs").exists()
    assert not math.isnan(calibrate.Rate(1, 20).ci()[0])
