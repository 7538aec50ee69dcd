"""Fault injection: SIGKILL a random worker or the runner itself, at random (seeded) moments, and
check after every run that nothing was lost.

    python bench/faults.py --kills 100 [--storages sqlite journal postgres] [--seed 0]

Each round runs a tiny 2-worker study (`studies/lr.py`) and kills one process of it after a
random delay: a worker (the runner must replace it and re-run its trial) or the runner (the
workers must fail their trials and exit; the same command is then run again). After every run:
the budget is never exceeded, no finished trial is lost or changed, nothing stays RUNNING once
a run has ended (after a killed runner: nothing its live workers held), every COMPLETE trial has
its intermediate values and its folder, and no run outlives its timeout. `tests/test_faults.py`
runs a few kills per storage in `make test`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mhtrain.study.records import OVER_BUDGET  # noqa: E402
from mhtrain.study.storage import open_storage  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_TIMEOUT_S = 240


@dataclass
class Report:
    storage: str
    injected: int = 0
    survived: int = 0
    runs: int = 0
    in_trial: int = 0  # kills that landed while a trial was RUNNING (the rest: start-up, between trials)
    trials_killed: int = 0  # trials failed by a kill and re-run
    lost: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        for name in ("injected", "survived", "runs", "in_trial", "trials_killed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost += other.lost

    def line(self) -> str:
        return (f"{self.storage:9s} faults injected {self.injected:4d} "
                f"({self.in_trial} with a trial running)  "
                f"survived {self.survived:4d}  trials killed and re-run {self.trials_killed:3d}  "
                f"runs {self.runs:4d}  lost {len(self.lost)}" + (f": {self.lost[:3]}" if self.lost else ""))


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def snapshot(storage: optuna.storages.BaseStorage, name: str,
             states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False, states=states)
    except KeyError:  # no study yet (killed during start-up)
        return []


def training(storage: optuna.storages.BaseStorage, name: str, proc: subprocess.Popen) -> bool:
    """Whether a live worker of this run holds a RUNNING trial (one left by a dead process of an
    earlier run does not count)."""
    pids = set(children(proc.pid))
    return any(t.user_attrs.get("owner", {}).get("pid") in pids
               for t in snapshot(storage, name, (TrialState.RUNNING,)))


def check(trials: list[optuna.trial.FrozenTrial], before: dict, n: int,
          killed_runner_workers: list[int] | None = None) -> list[str]:
    """Every invariant, as a list of what broke (empty when all hold). A run that ended by itself
    leaves nothing RUNNING; a killed runner cleans up nothing, so a trial whose worker died just
    before it stays RUNNING until the next run reaps it, but its live workers must fail theirs."""
    broken = []
    finished = [t for t in trials if t.state in FINISHED]
    if len(finished) > n:
        broken.append(f"budget overrun: {len(finished)} finished of {n}")
    by_number = {t.number: t for t in trials}
    for number, (state, value, inter) in before.items():
        t = by_number.get(number)
        if t is None or (t.state, t.value, t.intermediate_values) != (state, value, inter):
            broken.append(f"finished trial {number} lost or changed")
    running = [t for t in trials if t.state == TrialState.RUNNING and (
        killed_runner_workers is None or t.user_attrs.get("owner", {}).get("pid") in killed_runner_workers)]
    if running:
        broken.append(f"RUNNING after the run: {[t.number for t in running]}")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            if len(t.intermediate_values) != t.user_attrs.get("epochs"):
                broken.append(f"trial {t.number} lacks intermediate values")
            if not Path(t.user_attrs.get("output_dir", "/nonexistent")).is_dir():
                broken.append(f"trial {t.number} lacks its folder")
    return broken


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and _not_zombie(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def inject(url: str, data_dir: Path, workdir: Path, kills: int, seed: int, n_trials: int = 6,
           label: str | None = None) -> Report:
    """Run the study to its budget while `kills` SIGKILLs land on random processes of it. Half the
    kills wait for a RUNNING trial and land a random fraction of a trial later (mid-epoch, between
    epochs, around `tell`); the others land at any moment, mostly during start-up."""
    rng = random.Random(seed)
    name = f"faults_{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)  # the bench's own view of the study, opened once
    args = [sys.executable, str(ROOT / "studies" / "lr.py"), "--no-progress", "--storage", url,
            "--study-name", name, "--n-trials", str(n_trials), "--workers", "2", "--heartbeat", "1",
            "--pruner", "median", f"data.data_dir={data_dir}", "data.verify=false",
            "data.val_size=100", "data.train_subset=300", "trainer.max_epochs=2",
            "callbacks.early_stopping=null"]
    report = Report(label or url.split(":")[0].split("+")[0].replace(str(workdir), ""))
    left = kills
    while True:
        report.runs += 1
        before = {t.number: (t.state, t.value, t.intermediate_values)
                  for t in snapshot(storage, name, FINISHED)}
        proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        started, main_killed, workers = time.monotonic(), False, []
        while proc.poll() is None and left and not main_killed:
            if rng.random() < 0.5:
                deadline = time.monotonic() + 60
                while (proc.poll() is None and time.monotonic() < deadline
                       and not training(storage, name, proc)):
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                time.sleep(rng.uniform(0.2, 8.0))
            if proc.poll() is not None:
                break
            workers = children(proc.pid)
            target = proc.pid if (rng.random() < 0.3 or not workers) else rng.choice(workers)
            running = training(storage, name, proc)
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                continue
            left -= 1
            report.injected += 1
            report.in_trial += running
            if target == proc.pid:
                main_killed = True
                proc.wait()
                if not wait_gone(workers, 90):
                    report.lost.append("workers outlived their killed runner")
        try:
            _, err = proc.communicate(timeout=max(1, RUN_TIMEOUT_S - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            report.lost.append(f"run {report.runs} hung")
            return report
        trials = snapshot(storage, name)
        report.lost += check(trials, before, n_trials, workers if main_killed else None)
        if not main_killed and proc.returncode != 0:
            report.lost.append(f"run {report.runs} exit {proc.returncode}: {err.strip()[-300:]}")
            return report
        if not main_killed:
            finished = sum(t.state in FINISHED for t in trials)
            if finished != n_trials:
                report.lost.append(f"ended 0 with {finished} of {n_trials} finished")
            report.trials_killed = sum(t.state == TrialState.FAIL and OVER_BUDGET not in t.user_attrs
                                       for t in trials)
            report.survived = report.injected if not report.lost else report.survived
            return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100, help="SIGKILLs per storage (default 100)")
    p.add_argument("--storages", nargs="+", default=["sqlite", "journal", "postgres"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-study", type=int, default=6, help="kills per study before a fresh one")
    args = p.parse_args()
    from tests.conftest import write_tiny_mnist

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tiny_mnist(tmp / "data")
        for kind in args.storages:
            url = {"sqlite": f"sqlite:///{tmp / 'f.db'}", "journal": str(tmp / "f.journal"),
                   "postgres": os.environ.get("MHTRAIN_TEST_POSTGRES")}[kind]
            if url is None:
                print(f"{kind:9s} skipped: set MHTRAIN_TEST_POSTGRES")
                continue
            total, done, i = Report(kind), 0, 0
            while done < args.kills:
                r = inject(url, data, tmp, min(args.per_study, args.kills - done), args.seed + i, label=kind)
                total.add(r)
                done, i = done + max(r.injected, 1), i + 1
            print(total.line(), flush=True)
            for line in total.lost:
                print("   ", line, flush=True)


if __name__ == "__main__":
    main()
