"""One retry path: a trial that died is queued again by one helper (`policy.requeue`), counted by
one record (`retries`) against one cap (`MAX_RETRIES`), whichever way it died (a stale heartbeat,
a reaped owner, a stopped SLURM task). The machine's own faults (a full disk, a read-only or
vanished folder, a denied permission) are not the trial's: one line, no retry."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from mhtrain import DataError
from mhtrain.study import policy
from mhtrain.study.ledger import reap
from mhtrain.study.opening import open_study
from mhtrain.study.policy import MAX_FAILURES, MAX_RETRIES, RETRIES, RETRY_OF, MachineFault, requeue
from mhtrain.study.records import FAIL_REASON, OVER_BUDGET
from mhtrain.study.storage import Heartbeat, open_storage, retry_stale
from mhtrain.study.study_config import load
from tests.conftest import tiny_for
from tests.test_workers import study_args, trials, wait_for_running

LR = "model.optimizer.lr"
SPACE = {LR: FloatDistribution(1e-4, 1e-1, log=True)}


def failed(ostudy: optuna.Study, suggest: bool = True, **attrs: object) -> optuna.trial.FrozenTrial:
    """A trial that ran (the queued one first, with its value) and failed, with `attrs` recorded;
    one that died before it drew its value when not `suggest`."""
    trial = ostudy.ask()
    if suggest:
        trial.suggest_float(LR, SPACE[LR].low, SPACE[LR].high, log=True)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    ostudy.tell(trial, state=TrialState.FAIL)
    return ostudy.trials[trial.number]


def waiting(ostudy: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return ostudy.get_trials(states=(TrialState.WAITING,))


# --- the helper: one counter, one cap -------------------------------------------------------------


def test_one_helper_counts_each_rerun_and_stops_at_the_cap(tmp_path):
    ostudy = optuna.create_study(storage=open_storage(str(tmp_path / "r.journal")))
    ostudy.enqueue_trial({LR: 0.01})
    t = failed(ostudy)
    for count in range(1, MAX_RETRIES + 1):  # a first run, then its re-runs, each counted once
        assert requeue(ostudy, t)
        assert not requeue(ostudy, t)  # queued again once, whoever asks twice
        (again,) = waiting(ostudy)
        assert again.user_attrs == {RETRY_OF: t.number, RETRIES: count}
        assert again.system_attrs["fixed_params"] == {LR: 0.01}
        t = failed(ostudy)
        assert t.params == {LR: 0.01} and t.user_attrs[RETRIES] == count
    assert not requeue(ostudy, t) and not waiting(ostudy)  # the cap: left FAIL
    assert len(ostudy.trials) == 1 + MAX_RETRIES


def test_what_is_never_queued_again(tmp_path, capsys):
    ostudy = optuna.create_study(storage=open_storage(str(tmp_path / "n.journal")))
    nothing_asked = failed(ostudy, suggest=False)  # died before it drew a value: a fresh trial takes its slot
    ostudy.enqueue_trial({LR: 0.01})
    stepped_back = failed(ostudy, **{OVER_BUDGET: True})  # never trained
    ostudy.enqueue_trial({LR: 0.02})
    broken = failed(ostudy, **{RETRIES: "x"})  # a count that is not one: taken as the cap
    assert not any(requeue(ostudy, t) for t in (nothing_asked, stepped_back, broken))
    assert not waiting(ostudy)
    assert "stored retries = 'x' ignored" in capsys.readouterr().err


# --- the three ways in, in this process (the real processes are below) -----------------------------


def test_a_stale_heartbeat_goes_through_the_one_path(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert open_storage(url, heartbeat=1).get_heartbeat_stale_trial_callback() is retry_stale
    # a study holds its RDB storage wrapped in Optuna's cache: the trials it runs beat all the same
    assert Heartbeat(optuna.create_study(storage=open_storage(url, heartbeat=1))._storage).interval == 1
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=1,
                         heartbeat_stale_trial_callback=retry_stale)
    ostudy = optuna.create_study(storage=storage)
    ostudy.enqueue_trial({LR: 0.01}, user_attrs={RETRY_OF: 7, RETRIES: MAX_RETRIES - 1})
    for count in (MAX_RETRIES, None):  # counted on, then capped
        trial = ostudy.ask()
        trial.suggest_float(LR, 1e-4, 1e-1, log=True)
        storage.record_heartbeat(trial._trial_id)  # then it stops beating: its machine died
        time.sleep(2.1)  # past the grace period (SQLite's clock has whole seconds)
        fail_stale_trials(ostudy)
        assert ostudy.trials[trial.number].state == TrialState.FAIL
        assert [t.user_attrs for t in waiting(ostudy)] == (
            [{RETRY_OF: trial.number, RETRIES: count}] if count else [])


# --- the machine's faults ---------------------------------------------------------------------------


def real_error(action) -> OSError:
    try:
        action()
    except OSError as e:
        return e
    raise AssertionError("no error")


def test_the_machines_faults_are_one_line_naming_path_and_errno(tmp_path):
    folder = tmp_path / "runs" / "studies" / "s"
    (folder / "trial_0000").mkdir(parents=True)
    shutil.rmtree(folder / "trial_0000")  # the trial's folder vanished under it
    gone = real_error(lambda: (folder / "trial_0000" / "metrics.csv").write_text("x"))
    assert gone.errno == errno.ENOENT
    fault = policy.machine_fault(gone, folder)
    assert isinstance(fault, MachineFault) and isinstance(fault, DataError)  # one line, exit 2
    assert str(fault) == (f"{folder}/trial_0000/metrics.csv: No such file or directory (ENOENT); "
                          "its folder vanished while the trial ran; keep the trial folders in place")
    missing_input = real_error(lambda: (tmp_path / "nowhere" / "x.ckpt").read_bytes())
    assert policy.machine_fault(missing_input, folder) is None  # not in the trial folders: not the disk's

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write's error names no file
    try:  # Lightning ends a fit that failed by finishing its loggers, which meet the full disk again
        try:
            raise full
        except OSError as e:
            raise RuntimeError("finalizing the logger failed") from e
    except RuntimeError as wrapped:
        fault = policy.machine_fault(wrapped, folder)
    assert str(fault) == (f"{folder}: No space left on device (ENOSPC); "
                          "free space or point the trial folders elsewhere")
    for code in (errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        line = str(policy.machine_fault(OSError(code, os.strerror(code), str(folder)), folder))
        assert line.startswith(f"{folder}: {os.strerror(code)} ({errno.errorcode[code]}); "), line
        assert "\n" not in line
    assert policy.machine_fault(OSError(errno.EIO, "I/O error"), folder) is None  # one trial's bad luck
    read, write = os.pipe()
    os.close(read)  # the terminal or pipe the run printed to is gone (its shell was closed or killed)
    try:
        closed = real_error(lambda: os.write(write, b"epoch 1\n"))
    finally:
        os.close(write)
    assert str(policy.machine_fault(closed, folder)) == (
        "its output: Broken pipe (EPIPE); the terminal or pipe it printed to was closed; send its output "
        "to a file (nohup, or > log)")


def test_a_machine_fault_ends_the_study_at_the_first_failure(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(MachineFault, match=r"\(ENOSPC\)"):
        policy.after_failure(full, 1, tmp_path)
    policy.after_failure(ValueError("a NaN"), MAX_FAILURES - 1)  # anything else: survived a while
    with pytest.raises(ValueError):
        policy.after_failure(ValueError("a NaN"), MAX_FAILURES)


# --- real processes: killed three ways, one count, one cap -------------------------------------------

EPOCHS = 30  # long enough that each trial is still training when it is killed


def planted(tiny_data: Path, url: str, name: str) -> None:
    """The study as its command makes it, holding a trial re-run MAX_RETRIES - 1 times already
    (it failed, and its re-run waits): the next kill counts the last re-run, the one after meets the
    cap."""
    study = load("lr", name=name, n_trials=5, pruner="none",
                 extra_overrides=[*tiny_for(tiny_data, EPOCHS), "callbacks.early_stopping=null"])
    ostudy = open_study(study, url, heartbeat=1)
    ostudy.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={LR: 0.01}, distributions=SPACE,
                                               user_attrs={FAIL_REASON: "a run before this test"}))
    ostudy.enqueue_trial({LR: 0.01}, user_attrs={RETRY_OF: 0, RETRIES: MAX_RETRIES - 1})


SLURM_TASK = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0"}  # what a node gives an array task


def kill_one(way: str, args: list[str], url: str, name: str, cwd: Path) -> tuple[int, str]:
    """Start the study command, let it train its trial, kill it `way`; returns the trial's number
    and what the command printed, once the path that handles that death has run."""
    env = {**os.environ, **(SLURM_TASK if way == "slurm" else {})}
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_running(url, name, proc)
        (number,) = [t.number for t in trials(url, name) if t.state == TrialState.RUNNING]
        if way == "slurm":  # the scheduler's stop: the task itself fails its trial and queues it again
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 130, err[-3000:]
            return number, out
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ostudy = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=1))
    if way == "stale":  # its heartbeat stops: past the grace period (3 s) the stale callback fails it
        time.sleep(5.0)
        assert reap(ostudy) == []  # nothing left RUNNING for the local reaper
    else:  # a Journal file has no heartbeat: the reaper finds the owner dead on this host
        assert reap(ostudy) == [number]
    return number, ""


@pytest.mark.slow
@pytest.mark.parametrize("way", ["stale", "reaped", "slurm"])
def test_one_count_one_cap_whichever_way_a_trial_dies(way, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study's folders are under runs/ here, as for the command
    url = str(tmp_path / "k.journal") if way == "reaped" else f"sqlite:///{tmp_path / 'k.db'}"
    name = f"r_{uuid.uuid4().hex[:8]}"
    planted(tiny_data, url, name)
    args = study_args(tiny_data, url, name, 5, EPOCHS)
    first, said = kill_one(way, args, url, name, tmp_path)
    if way == "slurm":
        assert f"trial {first} was cut short by SLURM; enqueued" in said, said[-3000:]
    (again,) = [t for t in trials(url, name) if t.state == TrialState.WAITING]
    assert again.user_attrs == {RETRY_OF: first, RETRIES: MAX_RETRIES}  # one counter, one more
    assert again.system_attrs["fixed_params"] == {LR: 0.01}
    last, said = kill_one(way, args, url, name, tmp_path)  # the re-run queued just now, killed too
    assert "cut short by SLURM" not in said
    ts = trials(url, name)
    assert last == again.number and ts[last].params == {LR: 0.01}
    assert ts[last].state == TrialState.FAIL
    assert not [t for t in ts if t.state in (TrialState.WAITING, TrialState.RUNNING)]  # the cap
    assert not [t for t in ts if t.user_attrs.get(RETRY_OF) == last]
    assert [t.user_attrs.get(RETRIES) for t in ts] == [None, MAX_RETRIES - 1, MAX_RETRIES]


# --- real processes: the machine's fault under the trial folders ------------------------------------


def unshare_mount() -> list[str] | None:
    """How this machine mounts a private tmpfs for one command (a mount namespace: as root, else
    as a user namespace's root); None if it cannot."""
    if shutil.which("unshare") is None:
        return None
    for cmd in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        probe = subprocess.run([*cmd, "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return cmd
    return None


MOUNTS = {  # the folder `runs` on a tiny tmpfs of this command's own
    "ENOSPC": "mount -t tmpfs -o size=16k tmpfs runs && { dd if=/dev/zero of=runs/full 2>/dev/null; true; }",
    "EROFS": "mount -t tmpfs -o ro,size=16k tmpfs runs",
}


@pytest.mark.slow
@pytest.mark.parametrize("code", list(MOUNTS))
def test_a_full_or_read_only_disk_ends_the_run_in_one_line(code, tiny_data, tmp_path):
    unshare = unshare_mount()
    if unshare is None:
        pytest.skip("cannot mount a private tmpfs here (`unshare -m` and `mount -t tmpfs` need root "
                    "or user namespaces)")
    (tmp_path / "runs").mkdir()
    url, name = f"sqlite:///{tmp_path / 'f.db'}", f"f_{uuid.uuid4().hex[:8]}"  # the storage is not on it
    args = study_args(tiny_data, url, name, 3, 1)
    script = f"{MOUNTS[code]} && exec \"$@\""
    done = subprocess.run([*unshare, "sh", "-c", script, "sh", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if "A new study created" not in line]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"error: {tmp_path / 'runs'}") and f"({code}); " in lines[0], lines
    assert "point the trial folders" in lines[0]
    assert "trial failed" not in done.stdout  # no second trial tried
    (t,) = trials(url, name)  # the first trial met it; nothing queued again, no count touched
    assert t.state == TrialState.FAIL and os.strerror(getattr(errno, code)) in t.user_attrs[FAIL_REASON]
    assert RETRIES not in t.user_attrs and RETRY_OF not in t.user_attrs


@pytest.mark.slow
def test_with_two_workers_a_full_disk_ends_the_run_in_one_line_with_nothing_replaced(tiny_data, tmp_path):
    """Each worker meets the disk: the first refusal stops the other and the run (exit 2, one line),
    where a dead worker would be replaced and its trial queued again."""
    unshare = unshare_mount()
    if unshare is None:
        pytest.skip("cannot mount a private tmpfs here (`unshare -m` and `mount -t tmpfs` need root "
                    "or user namespaces)")
    (tmp_path / "runs").mkdir()
    url, name = f"sqlite:///{tmp_path / 'f.db'}", f"f_{uuid.uuid4().hex[:8]}"
    args = study_args(tiny_data, url, name, 4, 1, "--workers", "2")
    done = subprocess.run([*unshare, "sh", "-c", f"{MOUNTS['ENOSPC']} && exec \"$@\"", "sh", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if "A new study created" not in line]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"error: {tmp_path / 'runs'}") and "(ENOSPC); " in lines[0], lines
    assert "died" not in done.stdout  # no worker replaced
    ts = trials(url, name)
    assert ts and all(t.state == TrialState.FAIL for t in ts) and len(ts) <= 2  # one a worker at most
    assert not any(RETRIES in t.user_attrs for t in ts)
