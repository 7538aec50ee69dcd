"""Create or resume a study and run it to its total trial budget: one process or many, with one
progress bar, one clean stop on Ctrl-C, and every dead worker's trials re-run by a replacement."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain import ConfigError
from mhtrain.study import interrupt
from mhtrain.study.checkpoints import remember_store
from mhtrain.study.interrupt import StudyInterrupted
from mhtrain.study.ledger import POLL_S, counts, finished, n_done, reap, show
from mhtrain.study.objective import OUTPUT_ROOT, fail, run_trial
from mhtrain.study.population import population_size, work_population
from mhtrain.study.pruners import build_pruner
from mhtrain.study.samplers import make_sampler
from mhtrain.study.space import StudyConfig, base_config
from mhtrain.study.storage import HEARTBEAT_S, Heartbeat, open_storage
from mhtrain.study.warmstart import warm_start

MAX_FAILURES = 3  # failed trials in one process before the run gives up
RUNS_ROOT = Path("runs/studies")
IDENTITY = ("experiment", "metric", "direction", "search_space", "overrides")


@dataclass
class Outcome:
    """How a run ended, for a summary that tells the truth."""

    interrupted: bool = False
    timed_out: bool = False
    deaths: list[str] = field(default_factory=list)


def identity_changes(stored: dict, study: StudyConfig) -> list[str]:
    """What differs between the study in the storage and the one asked for now."""
    ours, changes = study.to_dict(), []
    for key in IDENTITY:
        old, new = stored.get(key), ours[key]
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            gone, added = [o for o in old if o not in new], [o for o in new if o not in old]
            changes.append(f"{key}: now without {gone} and with {added}" if gone or added
                           else f"{key}: same items in another order")
        elif isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
            changes.append(f"{key}: " + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys))
        else:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def open_study(study: StudyConfig, storage_url: str, heartbeat: int = HEARTBEAT_S,
               reproducible: bool = True, allow_changes: bool = False) -> optuna.Study:
    """Create the study, or load it if it exists, refusing one that is something else: resuming
    it with another experiment, metric, space or fixed overrides would rank unlike trials together.

    The sampler's seed is the study seed only for the process that creates the study and runs it
    alone (`reproducible`); any other process draws a seed of its own, or processes that open a
    study together would propose the very same parameters.
    """
    storage = open_storage(storage_url, heartbeat)
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        changes = identity_changes(existing.user_attrs.get("config", {}), study)
        if changes and not allow_changes:
            raise ConfigError(f"study {study.name} in {storage_url} was made differently "
                              f"({'; '.join(changes)}); use another --study-name, or "
                              "--allow-changes to mix them anyway")
    created = False
    if existing is None:
        try:
            optuna.create_study(storage=storage, study_name=study.name, direction=study.direction)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it a moment ago
    seed = study.seed if created and reproducible else int.from_bytes(os.urandom(4), "little")
    ostudy = optuna.load_study(study_name=study.name, storage=storage, sampler=make_sampler(study, seed),
                               pruner=build_pruner(study.pruner, study.max_epochs))
    if created:
        ostudy.set_metric_names([study.metric])
        ostudy.set_user_attr("config", study.to_dict())
    if OUTPUT_ROOT not in ostudy.user_attrs:
        ostudy.set_user_attr(OUTPUT_ROOT, str(output_root(study.name, storage_url, ostudy._study_id)))
    return ostudy


def output_root(name: str, storage_url: str, study_id: int) -> Path:
    """A folder only this study (in this storage) writes to; a re-created study whose id repeats
    gets a fresh one rather than the old study's files."""
    digest = hashlib.sha1(f"{storage_url}|{study_id}".encode()).hexdigest()[:8]
    root = RUNS_ROOT / f"{name}-{digest}"
    return root if not root.exists() else RUNS_ROOT / f"{name}-{digest}-{uuid.uuid4().hex[:6]}"


def work(study: StudyConfig, ostudy: optuna.Study, timeout: float | None = None,
         bar: tqdm | None = None) -> Outcome:
    """One worker: run trials until the study holds `n_trials` finished (complete or pruned).

    Trials other workers are running count toward the budget, so K workers do not overshoot;
    a worker waits for them (they may be dead and get re-run) rather than start one too many.
    """
    if isinstance(study.population, int) and study.population > 1:
        work_population(study, ostudy, study.population, timeout, bar)
        return Outcome(timed_out=timeout is not None and finished(ostudy) < study.n_trials)
    start, failures, outcome = time.monotonic(), 0, Outcome()
    with Heartbeat(ostudy._storage) as heartbeat:
        while True:
            interrupt.check()
            reap(ostudy)
            state = counts(ostudy)
            done = n_done(state)
            show(bar, ostudy, state, study.n_trials)
            if done >= study.n_trials:
                break
            if timeout and time.monotonic() - start > timeout:
                outcome.timed_out = True
                break
            if done + state[TrialState.RUNNING] >= study.n_trials and not state[TrialState.WAITING]:
                interrupt.wait(POLL_S)
                continue
            try:
                run_trial(study, ostudy, heartbeat)
            except (ConfigError, StudyInterrupted, optuna.exceptions.StorageInternalError):
                raise
            except Exception as e:  # noqa: BLE001 - one odd trial (already marked FAIL) is survivable
                failures += 1
                tqdm.write(f"trial failed: {type(e).__name__}: {e}")
                if failures >= MAX_FAILURES:
                    raise
    return outcome


def _worker(study: StudyConfig, storage_url: str, timeout: float | None, threads: int,
            heartbeat: int, stop: mp.synchronize.Event, parent: int) -> None:
    interrupt.install(shared=stop, ignore_sigint=True)
    interrupt.die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    try:
        interrupt.check()
        ostudy = open_study(study, storage_url, heartbeat, reproducible=False, allow_changes=True)
        work(study, ostudy, timeout)
    except StudyInterrupted:
        os._exit(130)


def run(study: StudyConfig, storage_url: str, timeout: float | None = None, progress: bool = True,
        workers: int = 1, heartbeat: int = HEARTBEAT_S,
        allow_changes: bool = False,
        warm: tuple[optuna.Study, int] | None = None) -> tuple[optuna.Study, Outcome]:
    """Run the study with `workers` processes; returns the study and how the run ended.

    `warm` = (another study, K): its best K trials are enqueued first (once, even on resume).
    The population size K (`study.population`, `auto` resolved for this device) is settled
    first: a study that cannot train stacked is refused before anything is written.
    """
    study.population = population_size(study)
    ostudy = open_study(study, storage_url, heartbeat, reproducible=workers == 1,
                        allow_changes=allow_changes)  # fails here, once, before any worker starts
    if study.keep_checkpoints != "none":
        remember_store(ostudy, storage_url)
    if warm is not None:
        base = base_config(study)
        keys = [p.key for p in study.search_space]
        warm_start(ostudy, *warm, keys, {k: OmegaConf.select(base, k, default=None) for k in keys})
    done = finished(ostudy)
    bar = tqdm(total=study.n_trials, initial=min(done, study.n_trials), desc=study.name,
               unit="trial", disable=not progress, dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    stop = ctx.Event() if workers > 1 else None
    previous = interrupt.install(shared=stop)
    try:
        if workers == 1:
            outcome = work(study, ostudy, timeout, bar)
        else:
            outcome = _supervise(study, storage_url, ostudy, timeout, workers, heartbeat, bar, ctx, stop)
    except StudyInterrupted:
        outcome = Outcome(interrupted=True)
    finally:
        bar.close()
        interrupt.restore(previous)
    return ostudy, outcome


def _supervise(study: StudyConfig, storage_url: str, ostudy: optuna.Study, timeout: float | None,
               workers: int, heartbeat: int, bar: tqdm, ctx, stop) -> Outcome:
    """Start the workers, watch every one, replace the dead (re-running their trials), and on a
    stop wait for all of them to fail their running trials and exit."""
    threads = max(1, (os.cpu_count() or 1) // workers)

    def start() -> mp.Process:
        p = ctx.Process(target=_worker, args=(study, storage_url, timeout, threads, heartbeat,
                                              stop, os.getpid()))
        p.start()
        return p

    outcome, replacements = Outcome(), 0
    procs = [start() for _ in range(workers)]
    try:
        while procs:
            for p in [p for p in procs if p.exitcode is not None]:
                procs.remove(p)
                p.join()
                if p.exitcode == 0 or (p.exitcode == 130 and interrupt.requested()):
                    continue
                held = reap(ostudy, dead_pid=p.pid)
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                line = (f"worker pid {p.pid} died ({how}) holding trial(s) "
                        f"{', '.join(map(str, held)) or 'none'}; they will be re-run")
                tqdm.write(line)
                outcome.deaths.append(line)
                state = counts(ostudy)
                if n_done(state) < study.n_trials:
                    if replacements >= 3 * workers:
                        raise RuntimeError(f"{replacements} workers replaced already; giving up")
                    replacements += 1
                    procs.append(start())
            show(bar, ostudy, counts(ostudy), study.n_trials)
            if procs and interrupt.wait(POLL_S):
                interrupt.check()
    except StudyInterrupted:
        outcome.interrupted = True
        stop.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
            reap(ostudy, dead_pid=p.pid)
        return outcome  # the killed workers' retries stay enqueued for the next run
    outcome.timed_out = timeout is not None and finished(ostudy) < study.n_trials
    return outcome


__all__ = ["Outcome", "fail", "open_study", "run", "work"]
