"""Many worker processes on one machine: each trains its own trials (or population) of the
study, sees one GPU (worker i: GPU i mod G, set before it imports torch), and is replaced when
it dies, its running trials failed and re-run."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from tqdm import tqdm

from mhtrain import ConfigError, DataError, quiet
from mhtrain.study import folders, interrupt, policy
from mhtrain.study.engines import engine
from mhtrain.study.ledger import POLL_S, counts, finished, n_done, reap, show
from mhtrain.study.lifecycle import Lifecycle
from mhtrain.study.opening import open_study
from mhtrain.study.policy import MAX_REPLACEMENTS
from mhtrain.study.records import StudyConfig
from mhtrain.study.slurm import placement
from mhtrain.study.storage import Heartbeat

GPU_ENV = "CUDA_VISIBLE_DEVICES"
REFUSED = 2  # a worker's exit code when it ended on a one-line refusal it put on `Pool.errors`


@dataclass
class Outcome:
    """How a run ended, for a summary that tells the truth."""

    interrupted: bool = False
    timed_out: bool = False
    deaths: list[str] = field(default_factory=list)


def visible_gpus(gpus: Sequence[str] | None = None) -> list[str]:
    """The GPUs workers are spread over: `gpus` if given, else this process's visible ones."""
    if gpus is not None:
        return list(gpus)
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [d.strip() for d in os.environ.get(GPU_ENV, "").split(",") if d.strip()]
    return listed or [str(i) for i in range(torch.cuda.device_count())]


def auto_workers(accelerator: Any = "auto", gpus: Sequence[str] | None = None) -> int:
    """`--workers auto`: one worker per GPU when the study trains on GPUs (`trainer.accelerator`
    gpu, cuda, or auto with GPUs there), else one: a CPU study on an 8-GPU machine would otherwise
    start 8 workers that share the cores."""
    accelerator = "auto" if accelerator is None else accelerator
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    if name.lower().removesuffix("accelerator") not in ("auto", "gpu", "cuda"):
        return 1
    return max(1, len(visible_gpus(gpus)))


@dataclass
class Pool:
    """How workers start: the multiprocessing context, the shared stop, their number and GPUs."""

    ctx: Any
    stop: Any
    size: int
    gpus: list[str]
    errors: Any = None  # a worker's one-line refusal (config, data, the machine's fault), for the parent

    def __post_init__(self) -> None:
        if self.errors is None:
            self.errors = self.ctx.SimpleQueue()

    def start(self, slot: int, args: tuple) -> mp.Process:
        """Start worker `slot`; a spawned child takes the environment as it is at `start`, so
        its GPU is set there (torch reads it when the child imports it) and restored after."""
        saved = os.environ.get(GPU_ENV)
        if self.gpus:
            os.environ[GPU_ENV] = self.gpus[slot % len(self.gpus)]
        try:
            p = self.ctx.Process(target=_worker, args=(*args, self.stop, self.errors, os.getpid()))
            p.start()
        finally:
            if saved is None:
                os.environ.pop(GPU_ENV, None)
            else:
                os.environ[GPU_ENV] = saved
        return p


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
        life = Lifecycle(study, ostudy, heartbeat, bar, deadline, where=placement())
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
                # raises when the study must stop: the machine's fault names where the trials write
                policy.after_failure(e, failures, folders.stored_folder(ostudy, folders.OUTPUT_ROOT))
                tqdm.write(f"trial failed: {type(e).__name__}: {e}")
    return outcome


def _worker(study: StudyConfig, storage_url: str, timeout: float | None, threads: int,
            heartbeat: int, stop: Any, errors: Any, parent: int) -> None:
    interrupt.install(shared=stop, ignore_sigint=True)
    interrupt.die_with_parent(parent)
    quiet()  # a spawned child starts with the warning filters at their defaults
    import torch

    torch.set_num_threads(threads)
    try:
        interrupt.check()
        ostudy = open_study(study, storage_url, heartbeat, reproducible=False, allow_changes=True)
        folders.check(ostudy, storage_url)  # read once here: what this worker's trials write to
        work(study, ostudy, timeout)
    except interrupt.StudyInterrupted:
        os._exit(130)
    except (ConfigError, DataError) as e:  # every worker would meet it: the parent stops the run
        errors.put((isinstance(e, ConfigError), str(e)))
        os._exit(REFUSED)


def supervise(study: StudyConfig, storage_url: str, ostudy: optuna.Study, pool: Pool,
              timeout: float | None, heartbeat: int, bar: tqdm) -> Outcome:
    """Start the workers, watch every one, replace the dead (re-running their trials) in the
    same slot and GPU, and on a stop wait for all of them to fail their running trials and exit."""
    threads = max(1, (os.cpu_count() or 1) // pool.size)
    args = (study, storage_url, timeout, threads, heartbeat)
    outcome, replacements = Outcome(), 0
    procs = {slot: pool.start(slot, args) for slot in range(pool.size)}
    try:
        while procs:
            for slot, p in [(s, p) for s, p in procs.items() if p.exitcode is not None]:
                del procs[slot]
                p.join()
                if p.exitcode == 0 or (p.exitcode == 130 and interrupt.requested()):
                    continue
                if p.exitcode == REFUSED and not pool.errors.empty():
                    config, message = pool.errors.get()
                    stop_all(pool, procs, ostudy)  # its own trial failed with its reason already
                    raise (ConfigError if config else DataError)(message)
                held = reap(ostudy, dead_pid=p.pid)
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                line = (f"worker pid {p.pid} died ({how}) holding trial(s) "
                        f"{', '.join(map(str, held)) or 'none'}; they will be re-run")
                tqdm.write(line)
                outcome.deaths.append(line)
                if finished(ostudy) < study.n_trials:
                    if replacements >= MAX_REPLACEMENTS * pool.size:
                        raise RuntimeError(f"{replacements} workers replaced already; giving up")
                    replacements += 1
                    procs[slot] = pool.start(slot, args)
            show(bar, ostudy, counts(ostudy), study.n_trials)
            if procs and interrupt.wait(POLL_S):
                interrupt.check()
    except interrupt.StudyInterrupted:
        outcome.interrupted = True
        stop_all(pool, procs, ostudy)
        return outcome  # the killed workers' retries stay enqueued for the next run
    outcome.timed_out = timeout is not None and finished(ostudy) < study.n_trials
    return outcome


def stop_all(pool: Pool, procs: dict[int, mp.Process], ostudy: optuna.Study) -> None:
    """Stop every worker (each fails its running trials), then reap what each held."""
    pool.stop.set()
    for p in procs.values():
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
            p.join()
        reap(ostudy, dead_pid=p.pid)
