"""The two ways a worker trains trials, behind one call: `Solo` trains one trial with `fit`,
`Population` trains up to K at once as one stacked model. Both start, report and end their
trials through the `Lifecycle` and nothing else; this is the only study module that needs
Lightning."""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tqdm import tqdm

from mhtrain import tracking
from mhtrain.pbt import SCHEDULE, Pbt, explore, segment
from mhtrain.population import Member
from mhtrain.population.fit import fit_population, member_from_config
from mhtrain.result import FitResult
from mhtrain.study import interrupt
from mhtrain.study.ledger import reap
from mhtrain.study.lifecycle import Lifecycle
from mhtrain.study.pruners import sub_epoch_points
from mhtrain.study.trials import search_base
from mhtrain.train import fit


class StopOnRequest(Callback):
    """Ends a trial's training at the next batch once a stop was asked for."""

    def on_train_batch_end(self, *_: Any) -> None:
        interrupt.check()

    on_validation_batch_end = on_train_epoch_start = on_train_batch_end

    def on_train_start(self, *_: Any) -> None:
        # SIGTERM (kill, scancel, a SLURM time limit or requeue) is the study's, as Ctrl-C is: the
        # handler each fit installs would also end the fit with SystemExit at an epoch's end
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupt.request)


class PruningCallback(Callback):
    """Reports the metric through the lifecycle at each validation (an epoch's end) and, when the
    pruner's `report_every` is a fraction, at those fractions of the first epoch too: read there
    by the module's `evaluate` on the val set, which leaves training as it would have been. Stops
    training cleanly when the pruner says so (`stop_reason` tells `fit` why it ended)."""

    def __init__(self, life: Lifecycle, trial: optuna.Trial) -> None:
        self.life, self.trial = life, trial
        self.stop_reason: str | None = None
        self.probes: dict[int, float] = {}  # batch of the first epoch -> epochs trained there

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.num_training_batches != float("inf"):
            self.probes = sub_epoch_points(trainer.num_training_batches, self.life.study.pruner.report_every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        epochs = self.probes.get(batch_idx + 1) if trainer.current_epoch == 0 else None
        if epochs is None or self.stop_reason:
            return
        metrics = {k: float(v) for k, v in pl_module.evaluate(trainer.val_dataloaders).items()}
        for logger in trainer.loggers:  # on the epoch-end curves, at the step trained so far
            logger.log_metrics({**metrics, "epoch": epochs}, step=trainer.global_step - 1)
        self._judge(trainer, epochs, metrics)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a sub-epoch stop makes Lightning validate once more where it stopped: judged already
        if trainer.sanity_checking or self.stop_reason:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self._judge(trainer, trainer.current_epoch + 1, metrics)

    def _judge(self, trainer: L.Trainer, epochs: float, metrics: dict[str, float]) -> None:
        if not self.life.report(self.trial, epochs, metrics):
            self.stop_reason = "pruned"
            trainer.should_stop = True


def checkpoint_saver(life: Lifecycle, output_dir: str) -> list[Callback]:
    """The callback that keeps the trial's best epoch, when the study keeps checkpoints."""
    study = life.study
    if study.keep_checkpoints == "none":
        return []
    return [ModelCheckpoint(dirpath=Path(output_dir) / "checkpoints", filename="best",
                            monitor=study.metric, mode="min" if study.direction == "minimize" else "max",
                            save_top_k=1, save_last=False)]


class Engine(Protocol):
    def run(self, life: Lifecycle) -> None:
        """Train trials the lifecycle starts until it has no room (a solo engine: one)."""


class Solo:
    """One trial at a time, trained by `mhtrain.train.fit`."""

    def run(self, life: Lifecycle) -> None:
        started = life.start()
        if started is None:
            return
        trial, cfg = started
        run = tracking.TrialRun(trial.number, dict(trial.params), life.study.metric)
        callbacks = [PruningCallback(life, trial), StopOnRequest(),
                     *checkpoint_saver(life, cfg.paths.output_dir), run.callback()]
        state = "FAIL"
        try:
            state = life.run(trial, lambda: run.keep(fit(cfg, callbacks=callbacks))).name
        finally:
            run.end(state)  # its tracking runs end as the trial did


class TrialMembers:
    """The population's member source backed by the lifecycle: members are started trials."""

    def __init__(self, life: Lifecycle, base: Any) -> None:
        self.life, self.base = life, base
        self.cohort: dict[int, list[int]] = {}  # trial -> the trials training with it when it joined
        self.runs: dict[int, tracking.TrialRun] = {}  # trial -> its tracking runs, while it trains
        # members finish together at the end of a population's run: progress moves by member-epoch
        shown = life.bar is not None and not life.bar.disable
        self.epochs = tqdm(total=life.study.n_trials * life.study.max_epochs, desc="member-epochs",
                           unit="epoch", position=1, leave=False, disable=not shown, dynamic_ncols=True)

    def next(self, free: int) -> list[Member]:
        life, members = self.life, []
        if free > 0:
            reap(life.ostudy)
        while (len(members) < free and not interrupt.requested() and life.room()
               and not life.past_deadline()):
            started = life.start()
            if started is None:
                break
            trial, cfg = started
            members.append(member := member_from_config(cfg, trial, self.base))
            self.runs[trial.number] = tracking.TrialRun(trial.number, dict(trial.params),
                                                        life.study.metric, loggers=member.loggers)
        for member in members:
            self.cohort[member.key.number] = sorted(life.running)
        return members

    def report(self, member: Member, epoch: int, metrics: dict[str, float]) -> bool:
        self.epochs.update(1)
        return self.life.report(member.key, epoch + 1, metrics)

    def finish(self, member: Member, result: FitResult) -> None:
        # a member matches its solo run only up to floating-point order: say with whom it ran
        cohort = {"cohort": self.cohort.pop(member.key.number, [])}
        run, state = self.runs.pop(member.key.number, None), "FAIL"
        try:
            state = self.life.end(member.key, dataclasses.replace(
                result, population={**(result.population or {}), **cohort})).name
        finally:
            if run is not None:
                run.end(state, result)

    def fail(self) -> None:
        """End the tracking runs of the members still training as failed."""
        for run in self.runs.values():
            run.end("FAIL")
        self.runs.clear()

    def close(self) -> None:
        self.epochs.close()


class PbtMembers(TrialMembers):
    """Trials as members that also exploit and explore (population-based training): explored
    values stay in the study's search space; each trial's `pbt_schedule` is stored as it grows."""

    def __init__(self, life: Lifecycle, base: Any) -> None:
        super().__init__(life, base)
        self.schedules: dict[int, list[dict[str, Any]]] = {}

    def next(self, free: int) -> list[Member]:
        members = super().next(free)
        for member in members:
            self._record(member.key, segment(0, None, self.life.study.search_space, member.key.params))
        return members

    def explore(self, values: dict[str, float], rng: random.Random) -> dict[str, float]:
        study = self.life.study
        return explore(study.search_space, study.pbt, values, rng)

    def exploited(self, member: Member, parent: Member, epoch: int, parent_epoch: int,
                  values: dict[str, float]) -> None:
        shown = ", ".join(f"{p.key.rpartition('.')[2]} {values[p.key]:.4g}"
                          for p in self.life.study.search_space)
        tqdm.write(f"PBT exploit: trial {member.key.number} (epoch {epoch}) copied trial {parent.key.number} "
                   f"(epoch {parent_epoch}), goes on with {shown}")
        self._record(member.key, segment(epoch, parent.key.number, self.life.study.search_space, values,
                                         parent_epoch))

    def finish(self, member: Member, result: FitResult) -> None:
        self.schedules.pop(member.key.number, None)
        super().finish(member, result)

    def _record(self, trial: optuna.Trial, entry: dict[str, Any]) -> None:
        schedule = self.schedules.setdefault(trial.number, [])
        schedule.append(entry)
        trial.set_user_attr(SCHEDULE, schedule)


class Population:
    """Up to `k` trials at once as one stacked model; members join as others leave (with the
    study's `pbt`, the population trains by population-based training)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def run(self, life: Lifecycle) -> None:
        study = life.study
        base = search_base(study.experiment, study.overrides)
        members, pbt = TrialMembers(life, base), None
        if study.pbt is not None:
            members = PbtMembers(life, base)
            pbt = Pbt(members, study.metric, study.direction == "maximize", study.pbt.interval,
                      study.pbt.quantile, seed=study.seed)
        try:
            fit_population(base, members, self.k, callbacks=[StopOnRequest()], pbt=pbt)
        except BaseException as e:
            life.fail_running(e)
            members.fail()
            raise
        finally:
            members.close()


def engine(population: int) -> Engine:
    return Population(population) if population > 1 else Solo()
