"""Create or resume a study and run it to its total trial budget: one process or many, with one
progress bar, one clean stop on Ctrl-C, and every dead worker's trials re-run by a replacement."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from tqdm import tqdm

from mhtrain import ConfigError, quiet
from mhtrain.study import interrupt, policy, records
from mhtrain.study.checkpoints import remember_store
from mhtrain.study.engines import engine
from mhtrain.study.ledger import POLL_S, counts, finished, n_done, reap, show
from mhtrain.study.lifecycle import Lifecycle
from mhtrain.study.pruners import build_pruner
from mhtrain.study.samplers import make_sampler
from mhtrain.study.space import StudyConfig, base_config
from mhtrain.study.storage import HEARTBEAT_S, Heartbeat, open_storage
from mhtrain.study.trials import OUTPUT_ROOT
from mhtrain.study.untrusted import check_resume
from mhtrain.study.warmstart import warm_start
from mhtrain.study.workers import Outcome, Pool, supervise, visible_gpus

RUNS_ROOT = Path("runs/studies")
EARLIER = "earlier_configs"  # study user attribute: what it was before each --allow-changes
CONFIG_WAIT_S = 10.0  # how long a process waits for the creator of a new study to store its config
VERSIONS = "versions"  # study user attribute: the package versions it was begun with
VERSIONED = ("mhtrain", "torch", "lightning", "optuna")
IDENTITY = ("experiment", "metric", "direction", "search_space", "overrides", "pbt")


def identity_changes(stored: dict, study: StudyConfig) -> list[str]:
    """What differs between the study in the storage and the one asked for now."""
    ours, changes = study.to_dict(), []
    for key in IDENTITY:
        old, new = stored.get(key), ours[key]
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            gone, added = [o for o in old if o not in new], [o for o in new if o not in old]
            parts = [f"without {gone}"] * bool(gone) + [f"with {added}"] * bool(added)
            changes.append(f"{key}: now {' and '.join(parts)}" if parts
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
    study together would propose the very same parameters."""
    storage, created = open_storage(storage_url, heartbeat), False
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        try:
            existing = optuna.create_study(storage=storage, study_name=study.name, direction=study.direction)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another process made it a moment ago
            existing = optuna.load_study(study_name=study.name, storage=storage)
    stored = None if created else stored_config(existing)
    if stored is None:  # new, or its creator died before storing its config: it is ours
        existing.set_metric_names([study.metric])
        existing.set_user_attr(OUTPUT_ROOT, str(output_root(study.name, storage_url, existing._study_id)))
        existing.set_user_attr(VERSIONS, versions())
        existing.set_user_attr("config", study.to_dict())  # last: it marks the study as ready
    else:
        warn_versions(existing.user_attrs.get(VERSIONS), study.name)
        changes = identity_changes(stored, study)
        if changes and not allow_changes:
            raise ConfigError(f"study {study.name} in {storage_url} was made differently "
                              f"({'; '.join(changes)}); use another --study-name, or "
                              "--allow-changes to mix them anyway")
        if changes:  # allowed: the study is now this one, so later resumes need no flag
            earlier = records.study_attr(existing, EARLIER, fatal=False) or []
            existing.set_user_attr(EARLIER, [*earlier, stored])
            existing.set_user_attr("config", study.to_dict())
    seed = study.seed if created and reproducible else int.from_bytes(os.urandom(4), "little")
    sampler = make_sampler(study.sampler, study.search_space, study.n_trials, seed)
    ostudy = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler,
                               pruner=build_pruner(study.pruner, study.max_epochs))
    if OUTPUT_ROOT not in ostudy.user_attrs:  # a study made before output roots were recorded
        ostudy.set_user_attr(OUTPUT_ROOT, str(output_root(study.name, storage_url, ostudy._study_id)))
    return ostudy


def versions() -> dict[str, str]:
    """The versions that decide a study's answer (Optuna 5.0 changed TPE's defaults, say)."""
    return {name: metadata.version(name) for name in VERSIONED}


def warn_versions(stored: object, name: str) -> None:
    """One line when a resumed study was begun with other versions: its trials mix them. The
    record is data from the storage: only its string versions of our packages are read."""
    now, stored = versions(), stored if isinstance(stored, dict) else {}
    changed = [f"{k} {stored[k]} -> {v}" for k, v in now.items()
               if isinstance(stored.get(k), str) and stored[k] != v]
    if changed:
        print(f"warning: study {name} was begun with other versions ({', '.join(changed)}); its "
              "trials mix them (`make install` installs the locked ones)", file=sys.stderr)


def stored_config(existing: optuna.Study) -> dict | None:
    """The config stored on a study, waiting for it if another process created the study a moment
    ago and is still writing it (its config is written last). None if it never comes: the
    creator died in those milliseconds, and the caller adopts the study. What comes is read
    through its schema (`records`): a config that is not one is one line."""
    deadline = time.monotonic() + CONFIG_WAIT_S
    while "config" not in existing.user_attrs:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    config = records.stored_config(existing)
    return None if config is None else config.model_dump()


def output_root(name: str, storage_url: str, study_id: int) -> Path:
    """A folder only this study (in this storage) writes to; a re-created study whose id repeats
    gets a fresh one rather than the old study's files."""
    digest = hashlib.sha1(f"{storage_url}|{study_id}".encode()).hexdigest()[:8]
    # a folder name Hydra's override parser takes unquoted (a study may be named `lr@x=1`)
    root = RUNS_ROOT / f"{re.sub(r'[^A-Za-z0-9._@:-]', '_', name)}-{digest}"
    return root if not root.exists() else RUNS_ROOT / f"{name}-{digest}-{uuid.uuid4().hex[:6]}"


def work(study: StudyConfig, ostudy: optuna.Study, timeout: float | None = None,
         bar: tqdm | None = None) -> Outcome:
    """One worker: train trials with the study's engine (solo, or a population of K) until the
    study holds `n_trials` finished ones (complete or pruned), or `timeout` seconds pass.
    Trials other workers are running count toward the budget, so K workers do not overshoot;
    a worker waits for them (they may be dead and get re-run) rather than start one too many."""
    trainer = engine(study.population)
    deadline = time.monotonic() + timeout if timeout else None
    failures, outcome = 0, Outcome()
    with Heartbeat(ostudy._storage) as heartbeat:
        life = Lifecycle(study, ostudy, heartbeat, bar, deadline)
        while True:
            interrupt.check()
            reap(ostudy)
            state = counts(ostudy)
            show(bar, ostudy, state, study.n_trials)
            if n_done(state) >= study.n_trials:
                break
            if life.past_deadline():
                outcome.timed_out = True
                break
            if not life.room():
                interrupt.wait(POLL_S)
                continue
            try:
                trainer.run(life)
            except Exception as e:  # noqa: BLE001 - its trials are FAIL with a reason already
                failures += 1
                policy.after_failure(e, failures)  # raises when the study must stop
                tqdm.write(f"trial failed: {type(e).__name__}: {e}")
    return outcome


def run(study: StudyConfig, storage_url: str, timeout: float | None = None, progress: bool = True,
        workers: int = 1, heartbeat: int = HEARTBEAT_S,
        allow_changes: bool = False, warm: tuple[optuna.Study, int] | None = None,
        gpus: Sequence[str] | None = None) -> tuple[optuna.Study, Outcome]:
    """Run the study with `workers` processes; returns the study and how the run ended.
    `warm` = (another study, K): its best K trials are enqueued first (once, even on resume).
    With several workers, worker i sees only GPU `gpus[i % len(gpus)]` (default: this
    machine's visible GPUs; none on a CPU machine)."""
    quiet()
    ostudy = open_study(study, storage_url, heartbeat, reproducible=workers == 1,
                        allow_changes=allow_changes)  # fails here, once, before any worker starts
    check_resume(ostudy, study, storage_url)  # what it holds is data: checked before any trial
    if study.keep_checkpoints != "none":
        remember_store(ostudy, storage_url)
    if warm is not None:
        base = base_config(study)
        keys = [p.key for p in study.search_space]
        warm_start(ostudy, *warm, study.search_space,  # values taken only inside their distributions
                   {k: OmegaConf.select(base, k, default=None) for k in keys})
    bar = tqdm(total=study.n_trials, initial=min(finished(ostudy), study.n_trials), desc=study.name,
               unit="trial", disable=not progress, dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    stop = ctx.Event() if workers > 1 else None
    previous = interrupt.install(shared=stop)
    try:
        if workers == 1:
            outcome = work(study, ostudy, timeout, bar)
        else:
            outcome = supervise(study, storage_url, ostudy, Pool(ctx, stop, workers, visible_gpus(gpus)),
                                timeout, heartbeat, bar)
    except interrupt.StudyInterrupted:
        outcome = Outcome(interrupted=True)
    finally:
        bar.close()
        interrupt.restore(previous)
    return ostudy, outcome


__all__ = ["Outcome", "open_study", "run", "work"]
