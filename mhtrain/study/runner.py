"""Create or resume a study and run it to its total trial budget: one process or many, with one
progress bar, nothing left RUNNING by a Ctrl-C, and dead workers' trials re-run."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from functools import partial

import optuna
from optuna.storages import JournalStorage, fail_stale_trials
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain import ConfigError
from mhtrain.study.objective import objective, owner
from mhtrain.study.space import StudyConfig
from mhtrain.study.storage import HEARTBEAT_S, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES = 3  # failed trials in one process before the run gives up
POLL_S = 2.0


class StudyInterrupted(Exception):
    """SIGINT/SIGTERM during a study: the running trial ends FAIL, the summary still prints."""


def make_sampler(study: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if study.sampler == "grid":
        grid = {p.key: p.grid() for p in study.search_space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(2, study.n_trials // 3)))


def make_pruner(study: StudyConfig) -> optuna.pruners.BasePruner:
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[study.pruner]()


def open_study(study: StudyConfig, storage_url: str, heartbeat: int = HEARTBEAT_S,
               worker: int = 0) -> optuna.Study:
    """Create the study, or load it if it exists, refusing one made for another experiment,
    direction or metric: resuming it would mix incomparable values.

    The sampler's seed is the study seed on a fresh single-process run; a resumed run or another
    worker offsets it, or it would propose the very parameters already tried.
    """
    storage = open_storage(storage_url, heartbeat)
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        old = existing.user_attrs.get("config", {})
        theirs = (old.get("experiment"), old.get("metric"), existing.direction.name.lower())
        ours = (study.experiment, study.metric, study.direction)
        if theirs != ours:
            raise ConfigError(
                f"study {study.name} in {storage_url} is {theirs[0]} optimizing {theirs[1]} "
                f"({theirs[2]}), not {ours[0]} optimizing {ours[1]} ({ours[2]}); "
                "pick another --study-name")
    offset = (len(existing.get_trials(deepcopy=False)) if existing else 0) + 7919 * worker
    ostudy = optuna.create_study(storage=storage, study_name=study.name, direction=study.direction,
                                 sampler=make_sampler(study, study.seed + offset),
                                 pruner=make_pruner(study), load_if_exists=True)
    if existing is None:
        ostudy.set_metric_names([study.metric])
        ostudy.set_user_attr("config", study.to_dict())
    return ostudy


def counts(ostudy: optuna.Study) -> Counter:
    return Counter(t.state for t in ostudy.get_trials(deepcopy=False))


def reap(ostudy: optuna.Study) -> None:
    """Fail the trials of dead workers so they are re-run with the same parameters.

    RDB storages know by heartbeat. Journal files have none, so a RUNNING trial whose recorded
    owner is a process on this host that no longer exists is failed and re-enqueued here.
    """
    if not isinstance(ostudy._storage, JournalStorage):
        fail_stale_trials(ostudy)
        return
    host, _ = owner()
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("owner")
        if not who or who["host"] != host or _alive(who["pid"]):
            continue
        try:
            ostudy.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another worker reaped it first
        ostudy.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum, frame) -> None:
    # a second signal must not interrupt the clean-up that marks the trial FAIL
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise StudyInterrupted(signal.Signals(signum).name)


def work(study: StudyConfig, storage_url: str, timeout: float | None = None,
         bar: tqdm | None = None, heartbeat: int = HEARTBEAT_S,
         ostudy: optuna.Study | None = None) -> optuna.Study:
    """One worker: run trials until the study holds `n_trials` finished (complete or pruned).

    Trials other workers are running count toward the budget, so K workers do not overshoot;
    a worker waits for them (they may be dead and get re-run) rather than start one too many.
    """
    ostudy = ostudy or open_study(study, storage_url, heartbeat)
    start, failures = time.monotonic(), 0
    func = partial(objective, study)
    while True:
        reap(ostudy)
        state = counts(ostudy)
        done = state[TrialState.COMPLETE] + state[TrialState.PRUNED]
        if bar is not None:
            bar.n = min(done, study.n_trials)
            bar.set_postfix(best=_best(ostudy), pruned=state[TrialState.PRUNED], refresh=True)
        if done >= study.n_trials or (timeout and time.monotonic() - start > timeout):
            break
        if done + state[TrialState.RUNNING] >= study.n_trials and not state[TrialState.WAITING]:
            time.sleep(POLL_S)
            continue
        try:
            # n_trials=1 per call: optuna then keeps the heartbeat and gc for us
            ostudy.optimize(func, n_trials=1, gc_after_trial=True)
        except (ConfigError, StudyInterrupted, optuna.exceptions.StorageInternalError):
            raise
        except Exception as e:  # noqa: BLE001 - one odd trial (already marked FAIL) is survivable
            failures += 1
            tqdm.write(f"trial failed: {type(e).__name__}: {e}")
            if failures >= MAX_FAILURES:
                raise
        gc.collect()
    return ostudy


def _worker(study: StudyConfig, storage_url: str, timeout: float | None, threads: int,
            heartbeat: int, index: int) -> None:
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        ostudy = open_study(study, storage_url, heartbeat, worker=index)
        work(study, storage_url, timeout, heartbeat=heartbeat, ostudy=ostudy)
    except StudyInterrupted:
        os._exit(130)


def run(study: StudyConfig, storage_url: str, timeout: float | None = None, progress: bool = True,
        workers: int = 1, heartbeat: int = HEARTBEAT_S) -> tuple[optuna.Study, bool]:
    """Run the study with `workers` processes; returns the study and whether it was interrupted."""
    ostudy = open_study(study, storage_url, heartbeat)  # fails here, once, before any worker starts
    done = sum(counts(ostudy)[s] for s in FINISHED)
    bar = tqdm(total=study.n_trials, initial=min(done, study.n_trials), desc=study.name,
               unit="trial", disable=not progress, dynamic_ncols=True)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[mp.Process] = []
    try:
        if workers == 1:
            work(study, storage_url, timeout, bar, heartbeat, ostudy)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker,
                                 args=(study, storage_url, timeout, threads, heartbeat, i + 1))
                     for i in range(workers)]
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                state = counts(ostudy)
                bar.n = min(state[TrialState.COMPLETE] + state[TrialState.PRUNED], study.n_trials)
                bar.set_postfix(best=_best(ostudy), pruned=state[TrialState.PRUNED], refresh=True)
                time.sleep(POLL_S)
            bad = [p.exitcode for p in procs if p.exitcode not in (0, 130)]
            if bad:
                raise RuntimeError(f"{len(bad)} worker(s) failed with exit codes {bad}")
        interrupted = False
    except StudyInterrupted:
        interrupted = True
        for p in procs:  # each marks its running trial FAIL and exits
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return ostudy, interrupted


def _best(ostudy: optuna.Study) -> str:
    try:
        return f"{ostudy.best_value:.4f}"
    except ValueError:
        return "-"


def summary(ostudy: optuna.Study, max_epochs: int, storage_url: str) -> str:
    """Best value and params, trials by state, epochs used versus an unpruned search."""
    trials = ostudy.get_trials(deepcopy=False)
    by_state = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    epochs = sum(t.user_attrs.get("epochs", 0) for t in finished)
    full = len(finished) * max_epochs
    lines = [f"study {ostudy.study_name}: {len(trials)} trials "
             f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(by_state.items()))})"]
    try:
        best = ostudy.best_trial
        metric = (ostudy.metric_names or ["value"])[0]
        lines.append(f"best {metric} = {best.value:.4f} (trial {best.number})")
        lines += [f"  {k} = {v:.6g}" if isinstance(v, float) else f"  {k} = {v}"
                  for k, v in best.params.items()]
    except ValueError:
        lines.append("no completed trial yet")
    if full:
        lines.append(f"epochs used: {epochs} of {full} an unpruned search would run "
                     f"({100 * epochs / full:.0f}%)")
    lines.append(f"dashboard: optuna-dashboard {storage_url}  (or `make dashboard`)")
    return "\n".join(lines)
