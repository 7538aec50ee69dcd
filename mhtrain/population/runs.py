"""Per-member bookkeeping a solo run's Trainer and callbacks keep, and its `FitResult` (host side)."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mhtrain.contract import metric_key
from mhtrain.population.check import check_early_stopping
from mhtrain.population.members import Member
from mhtrain.population.optim import adam_args
from mhtrain.result import FitResult


class Stopper:
    """Lightning's EarlyStopping rule from its public settings, applied to a member's metrics so
    it stops where its solo run's callback would (compared as float32 tensors, as it compares)."""

    def __init__(self, es: EarlyStopping) -> None:
        check_early_stopping(es)
        self.monitor, self.patience, self.check_finite = es.monitor, es.patience, es.check_finite
        self.maximize, self.min_delta = es.mode == "max", abs(float(es.min_delta))
        self.stopping_threshold, self.divergence_threshold = es.stopping_threshold, es.divergence_threshold
        self.best, self.wait = torch.tensor(-math.inf if self.maximize else math.inf), 0

    def _better(self, a: torch.Tensor | float, b: torch.Tensor | float) -> bool:
        return bool(torch.gt(a, b) if self.maximize else torch.lt(a, b))

    def should_stop(self, value: float) -> bool:
        """Whether this epoch's `value` of the monitored metric ends the run."""
        current = torch.tensor(value, dtype=torch.float32)
        if self.check_finite and not torch.isfinite(current):
            return True
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            return True
        if self.divergence_threshold is not None and self._better(-current, -self.divergence_threshold):
            return True
        if self._better(current - (self.min_delta if self.maximize else -self.min_delta), self.best):
            self.best, self.wait = current, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


@dataclass(eq=False)
class MemberRun:
    """A member while it trains."""

    member: Member
    generator: torch.Generator  # its batch order, seeded as its solo run's datamodule
    optimizer: torch.optim.Optimizer  # on a dummy parameter: holds its lr for its scheduler
    scheduler: Any
    stopper: Stopper | None
    joined: int  # population epoch it started at
    size: int = 0  # members training when it started
    start: float = field(default_factory=time.perf_counter)
    history: list[dict[str, float]] = field(default_factory=list)
    train_history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    acc_best: float = -math.inf
    stopped: str | None = None

    @classmethod
    def begin(cls, member: Member, epoch: int) -> tuple[MemberRun, dict[str, float]]:
        """A member joining at epoch `epoch`: its run and Adam arguments (lr as its scheduler set it)."""
        model = member.model
        optimizer = model.optimizer_factory(params=[torch.zeros(1, requires_grad=True)])
        scheduler = model.scheduler_factory(optimizer=optimizer) if model.scheduler_factory else None
        stopper = Stopper(member.early_stopping) if member.early_stopping is not None else None
        run = cls(member, torch.Generator().manual_seed(member.seed), optimizer, scheduler, stopper, epoch)
        return run, adam_args(optimizer)

    def adopt(self, parent: MemberRun, lr: float) -> None:
        """PBT's exploit on the run's side: its scheduler reads `lr` from now on and its early
        stopping goes on as `parent`'s (the stack took `parent`'s weights)."""
        self.optimizer.param_groups[0]["lr"] = lr  # what `restack` reads back
        self.stopper = copy.deepcopy(parent.stopper)

    def end_epoch(self, train: Mapping[str, float], val: Mapping[str, float], batches: int,
                  primary: str, report: Callable[[Member, int, Mapping[str, float]], bool]) -> bool:
        """The member's end of epoch as its solo Trainer sees it; returns whether it goes on."""
        member, epoch = self.member, len(self.history)
        self.steps += batches
        val = dict(val)
        self.acc_best = max(self.acc_best, val[metric_key("val", primary, "acc")])
        val[metric_key("val", None, "acc_best")] = self.acc_best
        for logger in member.loggers:  # rows as Lightning logs a solo run: val, then train
            logger.log_metrics({**val, "epoch": epoch}, step=self.steps - 1)
            logger.log_metrics({**train, "epoch": epoch}, step=self.steps - 1)
            logger.save()
        self.history.append(val)
        self.train_history.append(dict(train))
        if not report(member, epoch, val) and self.stopped is None:
            self.stopped = "pruned"
        every = {**train, **val}
        if self.stopper is not None and self.stopper.should_stop(every[self.stopper.monitor]):
            self.stopped = self.stopped or "early_stopping"
        if epoch + 1 >= member.max_epochs:
            self.stopped = self.stopped or "max_epochs"
            return False
        if self.stopped and epoch + 1 >= member.min_epochs:
            return False
        if self.scheduler is not None:
            with warnings.catch_warnings():  # its optimizer is a stand-in that never steps
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
                if isinstance(self.scheduler, ReduceLROnPlateau):
                    self.scheduler.step(every[member.model.scheduler_monitor])
                else:
                    self.scheduler.step()
        return True

    def result(self, heads: list[str]) -> FitResult:
        """The member's `FitResult`, as `fit` would return it (its loggers finalised)."""
        for logger in self.member.loggers:
            logger.finalize("success")
        return FitResult(history=self.history, train_history=self.train_history, test={},
                         seconds=time.perf_counter() - self.start,
                         params=sum(p.numel() for p in self.member.model.parameters()),
                         heads=heads, output_dir=self.member.output_dir,
                         stopped=self.stopped or "stopped",
                         population={"joined_epoch": self.joined, "members": self.size})
