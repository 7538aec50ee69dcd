"""Open a study: create it, or resume it after checking it is the same study (its experiment,
metric, space and fixed overrides), with its sampler, pruner and output folder; then prepare it
once (its stored trials checked against the local config, its checkpoint store, a warm start).
The one way every command that runs a study opens it: a local run, each worker, a SLURM submit."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from mhtrain import ConfigError
from mhtrain.study import records
from mhtrain.study.checkpoints import remember_store
from mhtrain.study.pruners import build_pruner
from mhtrain.study.records import OUTPUT_ROOT, StudyConfig
from mhtrain.study.samplers import make_sampler
from mhtrain.study.storage import HEARTBEAT_S, open_storage
from mhtrain.study.study_config import base_config
from mhtrain.study.untrusted import check_resume
from mhtrain.study.warmstart import warm_start

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


def prepare(ostudy: optuna.Study, study: StudyConfig, storage_url: str,
            warm: tuple[optuna.Study, int] | None = None) -> None:
    """What a study needs once before any trial: its stored trials checked against the local
    config (they are data), its checkpoint store, and `warm` = (another study, K): that study's
    best K trials enqueued first (once, even on resume; values taken only inside their
    distributions)."""
    check_resume(ostudy, study, storage_url)
    if study.keep_checkpoints != "none":
        remember_store(ostudy, storage_url)
    if warm is not None:
        base = base_config(study)
        keys = [p.key for p in study.search_space]
        defaults = {k: OmegaConf.select(base, k, default=None) for k in keys}
        warm_start(ostudy, *warm, study.search_space, defaults)
