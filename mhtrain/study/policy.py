"""The failure policy of a study, in one place, as Optuna's `optimize(catch=…)` is one argument:
which errors a study survives, how many failures end it, when a failed trial is queued again,
how often a dead worker is replaced.

Two modules tell Optuna a trial's state. The lifecycle tells every trial this process runs
(including its over-budget step-back). The reaper (`ledger.reap`, and for RDB storages Optuna's
heartbeat callback built in `storage`) fails trials whose process died: no lifecycle of theirs
is left to tell anything.

One path queues a trial again (`requeue`), with one counter (the re-run's `retries` record) and
one cap (`MAX_RETRIES`): a stale heartbeat, a reaped owner and a stop (Ctrl-C, SIGTERM, SLURM) all go
through it. The machine's own faults (`machine_fault`: a full disk, a read-only or vanished
folder, a denied permission) are not the trial's: the run ends at the first trial that meets
one, in one line, and nothing is queued again."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import optuna

from mhtrain import ConfigError, DataError
from mhtrain.study.interrupt import StudyInterrupted
from mhtrain.study.records import OVER_BUDGET, trial_attr

MAX_FAILURES = 3  # failed engine runs (a trial, or a population) in one worker before it gives up
MAX_RETRIES = 3  # re-runs of a trial whose worker died (killed, preempted) before it is left FAIL
MAX_REPLACEMENTS = 3  # dead workers replaced per worker slot before the supervisor gives up
RETRIES, RETRY_OF = "retries", "retry_of"  # a re-run's records: how many runs before it, of which trial


class MachineFault(DataError):
    """The machine refused what a trial writes (a full disk, a read-only or vanished folder, a
    denied permission): every trial would meet it alike, so it is never the trial's failure and
    never retried; the message is one line naming the path and the errno."""


# Errors that would fail every trial alike: the study stops at the first, never retries it.
FATAL = (ConfigError, DataError, StudyInterrupted, optuna.exceptions.StorageInternalError)

# The errnos that are the machine's, with what to do about each.
FAULTS = {
    errno.ENOSPC: "free space or point the trial folders elsewhere",
    errno.EDQUOT: "free space within the quota or point the trial folders elsewhere",
    errno.EROFS: "point the trial folders at a writable disk",
    errno.EACCES: "make it writable for this user or point the trial folders elsewhere",
    errno.EPERM: "make it writable for this user or point the trial folders elsewhere",
    errno.ENOENT: "its folder vanished while the trial ran; keep the trial folders in place",
    errno.EPIPE: "the terminal or pipe it printed to was closed; send its output to a file (nohup, or > log)",
}


def retries_of(ostudy: optuna.Study, t: optuna.trial.FrozenTrial) -> int:
    """How often the trial is a re-run already (a broken count: the cap, so it is not re-run)."""
    if t.user_attrs.get(RETRIES) is None:
        return 0
    count = trial_attr(ostudy, t, RETRIES, fatal=False)
    return MAX_RETRIES if count is None else count


def requeue(ostudy: optuna.Study, t: optuna.trial.FrozenTrial) -> bool:
    """The one retry path: queue the failed or interrupted trial `t` again with its parameters;
    whether it was. Not when it trained nothing it could re-run (no parameters yet, or an
    over-budget step-back), when it was queued again already, or when it is the `MAX_RETRIES`-th
    re-run: a trial runs at most 1 + MAX_RETRIES times, whatever stopped each run."""
    if not t.params or trial_attr(ostudy, t, OVER_BUDGET, fatal=False):
        return False
    retries = retries_of(ostudy, t)
    if retries >= MAX_RETRIES:
        return False
    if any(r.user_attrs.get(RETRY_OF) is not None and trial_attr(ostudy, r, RETRY_OF, fatal=False) == t.number
           for r in ostudy.get_trials(deepcopy=False)):
        return False
    ostudy.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number, RETRIES: retries + 1})
    return True


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling (Lightning wraps some)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _vanished(path: str, folder: Path | None) -> bool:
    """Whether `path`, inside the trial folders, lies in a folder that no longer exists."""
    try:
        where = Path(path).resolve()
        return folder is not None and where.is_relative_to(folder.resolve()) and not where.parent.exists()
    except (OSError, ValueError, RuntimeError):
        return False


def machine_fault(error: BaseException, folder: Path | None = None) -> MachineFault | None:
    """`error` as the machine's fault, if it is one: an OSError (itself, or one it was raised from)
    with errno ENOSPC, EDQUOT, EROFS, EACCES, EPERM or EPIPE (its output closed), or ENOENT on a path
    inside `folder` (the trial folders) whose folder vanished. One line naming the path (the OS's,
    else `folder`), what the errno says and what to do; None for anything else."""
    for e in _chain(error):
        if not isinstance(e, OSError) or e.errno not in FAULTS:
            continue
        path = next((str(p) for p in (e.filename, e.filename2) if p not in (None, "")), None)
        if e.errno == errno.ENOENT and (path is None or not _vanished(path, folder)):
            continue
        code = e.errno
        where = path or ("its output" if code == errno.EPIPE else str(folder) if folder is not None
                         else "the trial folders")
        return MachineFault(f"{where}: {os.strerror(code)} ({errno.errorcode[code]}); {FAULTS[code]}")
    return None


def config_error(error: Exception) -> ConfigError | None:
    """Lightning's verdict on a config it only judges mid-fit (a monitored metric that is never
    logged, say) as one line; None for anything else."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if not isinstance(error, MisconfigurationException):
        return None
    reason = " ".join(str(error).split())[:300]
    return ConfigError(f"Lightning refused this config in the first trial: {reason}")


def after_failure(error: Exception, failures: int, folder: Path | None = None) -> None:
    """Raise when the study must stop after its `failures`-th failed engine run, ended by `error`:
    a config, data, storage or stop error at once, the machine's fault (`machine_fault`, in the
    trial folders `folder`) at once as one line, anything else (a NaN, an out-of-memory, a flaky
    disk: one trial's bad luck) once `MAX_FAILURES` runs have failed in this worker."""
    if (end := not_the_runs(error, folder)) is error:
        raise error
    if end is not None:
        raise end from error
    if failures >= MAX_FAILURES:
        raise error


def not_the_runs(error: Exception, folder: Path | None = None) -> Exception | None:
    """What to end the whole run with when `error` is not one run's own but would meet every run
    alike (a config, data, storage or stop error; the machine's fault; Lightning's verdict on the
    config): then nothing is recorded against the run. None for one run's own failure."""
    if isinstance(error, FATAL):
        return error
    return machine_fault(error, folder) or config_error(error)
