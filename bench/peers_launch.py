"""One tool's run as bench/peers.py measures it: launched as its own process tree (its own
interpreter, its own environment), timed from launch to exit, its memory sampled, and what its
trials recorded through peers_clock.BatchClock read back into one row of numbers."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _tree(root: int) -> list[int]:
    """The pids of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _pss_mb(pids: Sequence[int]) -> float:
    """Proportional set size summed over `pids`, in MB: shared pages (Ray's object store, the
    libraries every worker maps) counted once, not once per process as RSS would."""
    kb = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                kb += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        except OSError:
            continue
    return kb / 1024


class MemorySampler(threading.Thread):
    """Peak PSS of a process tree, sampled every `every` seconds while it runs."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.processes = pid, every, 0.0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            pids = _tree(self.pid)
            self.processes = max(self.processes, len(pids))
            self.peak = max(self.peak, _pss_mb(pids))


def _own_session() -> None:
    """In the child: a session of its own (stopped as one group), and killed with the driver
    (Linux's parent-death signal), so a driver that is killed leaves no tool training behind."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Launch:
    """What the driver knows of a finished tool run."""

    ok: bool
    wall: float
    peak_mb: float
    processes: int
    started: float  # time.time() at launch
    log: Path
    result: dict[str, Any]


def launch(argv: Sequence[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> Launch:
    """Run `argv` as a new session (so it and every process it starts can be stopped together),
    output to `log`; a run past `timeout` is stopped and counted as failed."""
    started, t0 = time.time(), time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_own_session)  # noqa: PLW1509
        sampler = MemorySampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -1
        finally:  # also on Ctrl-C: what it left behind in its session (Ray's node processes)
            wall = time.perf_counter() - t0
            sampler.done.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sampler.join()
    result: dict[str, Any] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PEERS_RESULT "):
            result = json.loads(line.split(" ", 1)[1])
    return Launch(code == 0, wall, sampler.peak, sampler.processes, started, log, result)


def read_clock(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row(run: Launch, records: list[dict[str, Any]], target: float, slots: int,
        epochs: int) -> dict[str, float]:
    """One run's numbers from its clock records. A trial is a tag (Ray) or a fit; its batch
    seconds are the last cumulative value each fit wrote; overhead is the slot-seconds outside
    batches per trial (`slots` trials train at once)."""
    fits: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        fits.setdefault(r["fit"], []).append(r)
    vals = [r for r in records if r.get("event") == "val"]
    trials = {r["tag"] or r["fit"] for r in records if r.get("event") in ("start", "val")}
    per_trial: dict[str, int] = {}
    for r in vals:
        per_trial[r["tag"] or r["fit"]] = per_trial.get(r["tag"] or r["fit"], 0) + 1
    batches = sum(max((r["batches"] for r in rs if r.get("event") == "val"), default=0.0)
                  for rs in fits.values())
    firsts = [r["t"] for r in records if r.get("event") == "first_batch"]
    reached = [r["t"] for r in vals if r.get("acc") is not None and r["acc"] >= target]
    n = len(trials) or math.nan
    return {
        "wall": run.wall, "trials": len(trials), "per_hour": len(trials) / run.wall * 3600,
        "epochs": len(vals), "stopped": sum(1 for k in trials if per_trial.get(k, 0) < epochs),
        "first_batch": min(firsts) - run.started if firsts else math.nan,
        "overhead": (slots * run.wall - batches) / n,
        "best": max((r["acc"] for r in vals if r.get("acc") is not None), default=math.nan),
        "to_target": min(reached) - run.started if reached else math.inf,
        "peak_mb": run.peak_mb, "processes": run.processes,
    }
