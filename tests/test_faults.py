"""Faults: dead workers never hang or end a study, runs never share folders, damaged storage
files are repaired or refused in one line. Real processes killed with SIGKILL, real storages."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.faults import children, inject, wait_gone
from mhtrain.study import ledger
from mhtrain.study.ledger import alive, owner
from mhtrain.study.storage import open_storage
from tests.conftest import ROOT, tiny_for
from tests.test_workers import assert_intact, study_args, trials, wait_for_running


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_killed_worker_is_replaced_and_the_command_ends_0(tiny_data, kind, name, tmp_path):
    storage = {"sqlite": f"sqlite:///{tmp_path / 'k.db'}", "journal": str(tmp_path / "k.journal")}[kind]
    proc = subprocess.Popen(study_args(tiny_data, storage, name, 4, 4, "--workers", "2"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_running(storage, name, proc)
    (victim, *_) = [t.user_attrs["owner"]["pid"] for t in trials(storage, name)
                    if t.state == TrialState.RUNNING]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)  # before the fix: Journal waited forever, SQLite exit 1
    assert proc.returncode == 0, err[-3000:]
    assert f"worker pid {victim} died (signal 9) holding trial(s)" in out
    ts = trials(storage, name)
    assert_intact(ts, 4)
    # the victim's trial, by its owner: on a loaded machine a live worker's 1 s heartbeat can also
    # go stale for 3 s, and that trial is failed and queued again too (a second FAIL, not an error)
    (killed,) = [t for t in ts if t.state == TrialState.FAIL
                 and t.user_attrs.get("owner", {}).get("pid") == victim]
    assert any(t.params == killed.params and t.state == TrialState.COMPLETE for t in ts)


def test_a_running_trial_whose_process_died_before_naming_its_owner_is_reaped(tmp_path, monkeypatch):
    """A worker killed between `ask` and the owner record left a RUNNING trial nobody reaped: on a
    Journal file (no heartbeat) it held a budget slot for ever and the study waited without end."""
    ostudy = optuna.create_study(storage=open_storage(str(tmp_path / "o.journal")))
    ostudy.enqueue_trial({"x": 0.5})
    orphan = ostudy.ask()  # asked, never owned: its process is gone
    orphan.suggest_float("x", 0.0, 1.0)
    assert ledger.reap(ostudy) == []  # young: its process may still be about to record itself
    monkeypatch.setattr(ledger, "ORPHAN_S", 0.0)
    assert ledger.reap(ostudy) == [orphan.number]
    (old, rerun) = ostudy.get_trials()
    assert old.state == TrialState.FAIL and rerun.state == TrialState.WAITING
    assert rerun.system_attrs["fixed_params"] == {"x": 0.5} and rerun.user_attrs["retry_of"] == orphan.number


def test_a_zombie_or_a_recycled_pid_is_not_alive():
    zombie = mp.get_context("fork").Process(target=os._exit, args=(0,))
    zombie.start()
    time.sleep(0.5)  # exited, not yet waited for: a zombie
    assert not alive({"pid": zombie.pid, "started": None})
    zombie.join()
    me = owner()
    assert alive(me)
    assert not alive({**me, "started": str(int(me["started"]) + 1)})  # same pid, another process


@pytest.mark.slow
def test_studies_of_one_name_in_two_storages_keep_their_own_folders(tiny_data, tmp_path):
    dirs = []
    for db in ("a.db", "b.db"):
        storage = f"sqlite:///{tmp_path / db}"
        run = subprocess.run(study_args(tiny_data, storage, "same", 1, 1), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        (t,) = trials(storage, "same")
        dirs.append(Path(t.user_attrs["output_dir"]))
    assert dirs[0] != dirs[1]
    for d in dirs:
        assert (d / "config.yaml").is_file() and list(d.rglob("metrics.csv"))
    assert not list(tmp_path.rglob("*.ckpt"))  # search trials keep no checkpoints


@pytest.mark.slow
def test_a_torn_journal_is_repaired_and_keeps_every_finished_trial(tiny_data, name, tmp_path):
    journal = tmp_path / "t.journal"
    first = subprocess.run(study_args(tiny_data, str(journal), name, 2, 1), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = [(t.number, t.value) for t in trials(str(journal), name)]
    with journal.open("ab") as f:
        f.write(b'{"op_code": 6, "worker_id": "x", "trial_id": 1, "sta')  # a crash mid-write
    again = subprocess.run(study_args(tiny_data, str(journal), name, 3, 1), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "torn record" in again.stderr
    ts = trials(str(journal), name)
    assert [(t.number, t.value) for t in ts[:2]] == before
    assert_intact(ts, 3)


@pytest.mark.slow
def test_a_file_that_is_not_a_database_is_one_line_and_untouched(tiny_data, tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("my notes, not a database\n")
    run = subprocess.run(study_args(tiny_data, f"sqlite:///{bad}", "x", 1, 1), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "is not a SQLite database" in run.stderr
    assert bad.read_text() == "my notes, not a database\n"


@pytest.mark.slow
def test_killed_runner_takes_its_workers_down(tiny_data, name, tmp_path):
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    proc = subprocess.Popen(study_args(tiny_data, storage, name, 4, 20, "--workers", "2"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_running(storage, name, proc)
    workers = children(proc.pid)
    proc.kill()
    proc.wait()
    assert wait_gone(workers, 60)  # each failed its trial and exited
    assert not [t for t in trials(storage, name) if t.state == TrialState.RUNNING]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11])
def test_random_sigkills_lose_nothing(tiny_data, storage, seed, tmp_path):
    """The short form of `bench/faults.py --kills 100`: 3 seeded kills per storage."""
    report = inject(storage, tiny_data, tmp_path, kills=3, seed=seed, n_trials=5)
    assert report.lost == [], report.line()
    assert report.injected == 3


@pytest.fixture
def name() -> str:
    import uuid

    return f"f_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def storage(request, tmp_path: Path) -> str:
    url = os.environ.get("MHTRAIN_TEST_POSTGRES")
    if request.param == "postgres" and not url:
        pytest.skip("set MHTRAIN_TEST_POSTGRES (.ci/run starts a server)")
    return {"sqlite": f"sqlite:///{tmp_path / 'optuna.db'}", "journal": str(tmp_path / "optuna.journal"),
            "postgres": url}[request.param]


def kill_population_and_resume(args: list[str], storage: str, name: str, folder: Path, members: int,
                               until) -> list[optuna.trial.FrozenTrial]:
    """SIGKILL a population worker once `until(trials)` holds, run the same command again, and
    check nothing was lost: the `members` it held failed, each re-run with its values to COMPLETE."""
    first = subprocess.Popen(args, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not until(trials(storage, name)):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.3)
    first.kill()
    first.wait()
    killed = [t for t in trials(storage, name) if t.state == TrialState.RUNNING]
    assert len(killed) == members  # the whole stack was running
    again = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(storage, name)
    assert_intact(ts, 4)
    for k in killed:
        assert ts[k.number].state == TrialState.FAIL
        assert any(t.params == k.params and t.state == TrialState.COMPLETE for t in ts)
    return ts


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_killed_population_worker_is_rerun_member_by_member(tiny_data, kind, name, tmp_path):
    storage = {"sqlite": f"sqlite:///{tmp_path / 'p.db'}", "journal": str(tmp_path / "p.journal")}[kind]
    args = study_args(tiny_data, storage, name, 4, 3, "--population", "2")
    both_running = lambda ts: sum(t.state == TrialState.RUNNING for t in ts) == 2  # noqa: E731
    kill_population_and_resume(args, storage, name, tmp_path, 2, lambda ts: both_running(ts)
                               and any(t.intermediate_values for t in ts if t.state == TrialState.RUNNING))


@pytest.mark.slow
def test_a_killed_pbt_worker_loses_no_finished_member_and_the_study_resumes(tiny_data, name, tmp_path):
    """PBT is a population like any other to the lifecycle: a SIGKILL fails the members it held,
    they are re-run with their starting values, and the budget is exact."""
    storage = f"sqlite:///{tmp_path / 'pbt.db'}"
    args = [sys.executable, str(ROOT / "studies" / "pbt_loss_weights.py"), "--no-progress", "--storage",
            storage, "--study-name", name, "--n-trials", "4", "--heartbeat", "1", *tiny_for(tiny_data, 4)]
    past_a_copy = lambda ts: any(len(t.intermediate_values) >= 2 for t in ts)  # noqa: E731
    ts = kill_population_and_resume(args, storage, name, tmp_path, 4, past_a_copy)
    for t in ts:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["pbt_schedule"][0]["epoch"] == 0  # each with its schedule
