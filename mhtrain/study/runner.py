"""Run a study to its total trial budget: one process or many, with one progress bar, one clean
stop on Ctrl-C, and every dead worker's trials re-run by a replacement."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

import optuna
from tqdm import tqdm

from mhtrain import quiet
from mhtrain.study import interrupt
from mhtrain.study.ledger import finished
from mhtrain.study.opening import open_study, prepare
from mhtrain.study.records import StudyConfig
from mhtrain.study.storage import HEARTBEAT_S
from mhtrain.study.workers import Outcome, Pool, supervise, visible_gpus, work


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
    prepare(ostudy, study, storage_url, warm)  # what it holds is data: checked before any trial
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
