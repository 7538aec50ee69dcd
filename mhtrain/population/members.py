"""What a population is made of: members (a solo run's pieces, built by whoever supplies them)
and the protocol between the engine and that supplier. No Optuna here: a study is one supplier,
a benchmark's random search another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import Logger

from mhtrain.models.module import MultiheadLitModule
from mhtrain.result import FitResult


@dataclass(eq=False)
class Member:
    """One run of the population, built exactly as its solo run would build it.

    `model` must have been built with the CPU generator seeded as its solo run seeds it (its
    initial weights are then the solo run's); `seed` seeds its batch order and its dropout
    streams; the early stopping callback and the loggers are the solo run's.
    """

    key: Any  # the supplier's handle for this run (an Optuna trial, a name)
    model: MultiheadLitModule
    seed: int
    max_epochs: int
    min_epochs: int = 1
    early_stopping: EarlyStopping | None = None
    loggers: list[Logger] = field(default_factory=list)
    output_dir: str = ""


class MemberSource(Protocol):
    """Supplies members and hears how they do: the population's counterpart of a study."""

    def next(self, free: int) -> list[Member]:
        """Up to `free` new members to start now (at an epoch boundary); [] when there are none."""

    def report(self, member: Member, epoch: int, metrics: Mapping[str, float]) -> bool:
        """A member's validation metrics after `epoch`; False stops it (pruned)."""

    def finish(self, member: Member, result: FitResult) -> None:
        """A member has left: `result` is what `mhtrain.train.fit` returns for a solo run, with
        `stopped` (max_epochs, early_stopping, pruned; `stopped` if the Trainer was stopped from
        outside) and `population` ({"joined_epoch": …, "members": …}) set, `test` empty."""

