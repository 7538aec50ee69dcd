"""The study as a runner sees it: trials by state, who runs each, the progress bar, and the
running trials of dead workers, failed and queued again (through `policy.requeue`, the one retry
path). Imports no torch or Lightning."""

from __future__ import annotations

import datetime
import os
import socket
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain import tracking
from mhtrain.study.policy import requeue
from mhtrain.study.records import Owner, trial_attr

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 2.0
# A RUNNING trial with no owner after this long lost its process between `ask` and the owner
# record (milliseconds apart); without a reaper it would hold a budget slot for ever.
ORPHAN_S = 60.0


def _stat(pid: int) -> list[str]:
    """The process's /proc stat fields after its name (Linux); none if it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, Linux): a pid is reused, this is not."""
    stat = _stat(pid)
    return stat[19] if stat else None


def owner() -> dict[str, Any]:
    """Who runs a trial: host, pid and the pid's start time, so a reaper never mistakes a
    recycled pid for the worker that started the trial; and the GPU the worker was given."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid),
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}


def counts(ostudy: optuna.Study) -> Counter:
    return Counter(t.state for t in ostudy.get_trials(deepcopy=False))


def n_done(state: Counter) -> int:
    """Trials that count toward the budget as done (complete or pruned), from `counts`."""
    return sum(state[s] for s in FINISHED)


def finished(ostudy: optuna.Study) -> int:
    return n_done(counts(ostudy))


def alive(who: Owner | Mapping[str, Any]) -> bool:
    """Whether the process that started a trial still runs: a zombie or a recycled pid does not.
    `who`: a checked owner record, or this process's own (`owner()`)."""
    pid, started = (who.pid, who.started) if isinstance(who, Owner) else (who["pid"], who.get("started"))
    stat = _stat(pid)
    return bool(stat) and stat[0] != "Z" and started in (None, stat[19])


def trial_owner(ostudy: optuna.Study, t: optuna.trial.FrozenTrial) -> Owner | bool | None:
    """The trial's owner, read and checked once: None when it has none yet, False when its record
    is broken (one warning line; such a trial is reaped, not fatal to the study)."""
    if t.user_attrs.get("owner") is None:
        return None
    return trial_attr(ostudy, t, "owner", fatal=False) or False


def end_runs(ostudy: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """End the tracking runs of a trial whose worker died, from its checked records."""
    tracking.end_abandoned(t.number, trial_attr(ostudy, t, tracking.TRACKING, fatal=False),
                           trial_attr(ostudy, t, "output_dir", fatal=False))


def reap(ostudy: optuna.Study, dead_pid: int | None = None) -> list[int]:
    """Fail the running trials of dead workers and queue them again (`policy.requeue`: one
    counter, one cap); returns their numbers.
    A worker on this host is checked directly (any storage); one elsewhere by heartbeat (RDB).
    A trial whose owner record is broken is reaped as one whose worker is gone."""
    if dead_pid is None:
        fail_stale_trials(ostudy)  # RDB heartbeats; a no-op for Journal files
    host, now, reaped = owner()["host"], datetime.datetime.now(), []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial_owner(ostudy, t)
        if who is None:
            if dead_pid is not None or (now - t.datetime_start).total_seconds() < ORPHAN_S:
                continue
        elif who is not False and (who.host != host or (
                (who.pid != dead_pid) if dead_pid is not None else alive(who))):
            continue
        try:
            ostudy.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process reaped it first
        reaped.append(t.number)
        end_runs(ostudy, t)
        requeue(ostudy, t)
    return reaped


def show(bar: tqdm | None, ostudy: optuna.Study, state: Counter, n_trials: int) -> None:
    if bar is None:
        return
    try:
        best = f"{ostudy.best_value:.4f}"
    except ValueError:
        best = "-"
    bar.n = min(n_done(state), n_trials)
    bar.set_postfix(best=best, pruned=state[TrialState.PRUNED], refresh=True)
