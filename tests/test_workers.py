"""Many workers, nothing lost: real processes on SQLite, Journal files and PostgreSQL."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mhtrain.study import runner, study_config
from mhtrain.study.records import FAIL_REASON, OVER_BUDGET
from mhtrain.study.storage import open_storage
from mhtrain.study.workers import auto_workers
from tests.conftest import ROOT, tiny_for

pytestmark = pytest.mark.slow  # real worker processes, killed and interrupted

POSTGRES = os.environ.get("MHTRAIN_TEST_POSTGRES")
STORAGES = [
    "sqlite",
    "journal",
    pytest.param("postgres", marks=pytest.mark.skipif(
        not POSTGRES, reason="set MHTRAIN_TEST_POSTGRES (.ci/run starts a server)")),
]


@pytest.fixture(params=STORAGES)
def storage(request, tmp_path: Path) -> str:
    return {"sqlite": f"sqlite:///{tmp_path / 'optuna.db'}",
            "journal": str(tmp_path / "optuna.journal"),
            "postgres": POSTGRES}[request.param]


@pytest.fixture
def name() -> str:
    return f"w_{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the tests


def study_args(tiny_data: Path, storage: str, name: str, n: int, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "studies" / "lr.py"), "--no-progress", "--storage", storage,
            "--study-name", name, "--n-trials", str(n), "--pruner", "none", "--heartbeat", "1",
            *extra, *tiny_for(tiny_data, epochs), "callbacks.early_stopping=null"]


def trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()
    except KeyError:
        return []


def wait_for_running(storage: str, name: str, proc: subprocess.Popen, after: int = 0) -> None:
    """Block until the process has a trial RUNNING (and `after` trials finished)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ts = trials(storage, name)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)
        if finished >= after and any(t.state == TrialState.RUNNING and "owner" in t.user_attrs for t in ts):
            time.sleep(1.5)  # into the trial's epochs
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
    raise AssertionError("no trial started")


def assert_intact(ts: list[optuna.trial.FrozenTrial], n: int) -> None:
    finished = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n, [(t.number, t.state) for t in ts]
    assert len({t.number for t in ts}) == len(ts)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    for t in finished:
        assert 0.0 <= t.value <= 1.0
        assert len(t.intermediate_values) == t.user_attrs["epochs"]
        assert t.value == max(t.intermediate_values.values())


def test_two_workers_reach_exactly_n(tiny_data, storage, name, tmp_path):
    proc = subprocess.run(study_args(tiny_data, storage, name, 5, 2, "--workers", "2"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    everything = trials(storage, name)
    assert_intact(everything, 5)
    stepped_back = [t for t in everything if t.user_attrs.get(OVER_BUDGET)]
    for t in stepped_back:  # asked in a race for the last slot: failed at once, never trained
        assert t.state == TrialState.FAIL and not t.params and not t.intermediate_values
        assert t.user_attrs[FAIL_REASON].startswith("over budget")  # every FAIL says why
    ts = [t for t in everything if t not in stepped_back]
    assert len(ts) == 5
    assert len({t.user_attrs["owner"]["pid"] for t in ts}) == 2  # both workers ran trials
    assert len({t.params["model.optimizer.lr"] for t in ts}) == 5  # no worker repeats another


def test_sigkill_mid_trial_is_rerun_and_nothing_lost(tiny_data, storage, name, tmp_path):
    args = study_args(tiny_data, storage, name, 2, 8)
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_running(storage, name, first, after=1)
    before = {t.number: t for t in trials(storage, name)}
    first.kill()
    first.wait()
    (killed,) = [t for t in before.values() if t.state == TrialState.RUNNING]

    second = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    ts = trials(storage, name)
    assert_intact(ts, 2)
    assert ts[killed.number].state == TrialState.FAIL
    rerun = [t for t in ts if t.number > killed.number and t.params == killed.params]
    assert rerun and rerun[0].state == TrialState.COMPLETE
    for number, t in before.items():  # every trial finished before the kill is untouched
        if t.state == TrialState.COMPLETE:
            assert ts[number].value == t.value
            assert ts[number].intermediate_values == t.intermediate_values


def test_sigint_fails_the_running_trial_then_resumes(tiny_data, storage, name, tmp_path):
    args = study_args(tiny_data, storage, name, 2, 12)
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_running(storage, name, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"study {name}" in out and "trial 0 was interrupted; queued again" in out
    ts = trials(storage, name)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.WAITING]
    assert ts[0].user_attrs[FAIL_REASON].startswith("interrupted")

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(storage, name)
    assert_intact(ts, 2)
    # the interrupted parameters ran to the end on resume (they were lost to a stop before)
    assert ts[1].params == ts[0].params and ts[1].state == TrialState.COMPLETE


def test_unreachable_storage_is_one_clear_error(tiny_data, tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere"
    proc = subprocess.run(study_args(tiny_data, url, "x", 1, 1), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: cannot open storage")


def test_existing_study_with_other_metric_is_refused_by_the_cli(tiny_data, tmp_path, name):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ok = subprocess.run(study_args(tiny_data, storage, name, 1, 1), cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(study_args(tiny_data, storage, name, 2, 1, "--metric", "val/avg_acc"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "made differently" in bad.stderr
    assert len(trials(storage, name)) == 1


@pytest.mark.parametrize("storage", [STORAGES[0], STORAGES[2]], indirect=True)  # seeding is storage-blind
def test_processes_started_together_never_repeat_parameters(tiny_data, storage, name, tmp_path):
    """The many-machines recipe: the same command started at once against one study."""
    first = subprocess.run(study_args(tiny_data, storage, name, 1, 1), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    both = [subprocess.Popen(study_args(tiny_data, storage, name, 5, 1), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in both:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    ts = [t for t in trials(storage, name) if t.state == TrialState.COMPLETE]
    assert len(ts) == 5
    lrs = [t.params["model.optimizer.lr"] for t in ts]
    assert len(set(lrs)) == len(lrs), lrs


@pytest.mark.parametrize("seed", [1, 2])
def test_ctrl_c_with_workers_stops_everything_at_any_moment(tiny_data, name, tmp_path, seed):
    import random

    from bench.faults import children, wait_gone

    storage = f"sqlite:///{tmp_path / 'c.db'}"
    proc = subprocess.Popen(study_args(tiny_data, storage, name, 4, 3, "--workers", "2"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(random.Random(seed).uniform(0.5, 12.0))
    workers = children(proc.pid)
    stopped_at = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err[-3000:]  # 0: it had already finished
    assert wait_gone(workers, 30)
    assert "Traceback" not in err and "Should not reach" not in err, err[-3000:]
    ts = trials(storage, name)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert sum(t.state == TrialState.COMPLETE for t in ts) <= 4
    late = [t.number for t in ts if t.datetime_start and t.datetime_start.timestamp() > stopped_at + 1.0]
    assert not late, f"trials {late} started after the Ctrl-C"
    if proc.returncode == 130:
        assert "interrupted" in out + err  # the summary, or a stop while it was still starting


def test_each_worker_sees_one_gpu_of_the_machine(tiny, tmp_path, monkeypatch):
    """Worker i gets GPU i mod G in CUDA_VISIBLE_DEVICES before it imports torch (a replacement
    takes its slot's GPU); checked on the CPU through the environment each worker records."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "parent's own")
    study = study_config.load("lr", n_trials=4, pruner="none",
                              extra_overrides=[*tiny, "trainer.max_epochs=1"])
    ostudy, _ = runner.run(study, f"sqlite:///{tmp_path / 'g.db'}", progress=False, workers=2,
                           gpus=["3", "5"])
    seen = {t.user_attrs["owner"]["pid"]: t.user_attrs["owner"]["gpu"] for t in ostudy.get_trials()}
    assert set(seen.values()) == {"3", "5"} and len(seen) == 2, seen
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "parent's own"  # restored after each start
    assert auto_workers() == 1  # no GPU here: `--workers auto` is one worker
