"""Members (a solo run's pieces) and the protocol of their supplier (a study, a random search)."""

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
    """One run of the population, built as its solo run builds it (`model` with the CPU generator
    seeded as there, so its dropout streams too); `seed` seeds its batch order (and the streams of
    a net's plain nn.Dropout layers, where a model built by hand has any)."""

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
        """A member has left: `result` as `fit` returns it, `test` empty, `stopped` (max_epochs,
        early_stopping, pruned or stopped) and `population` ({"joined_epoch", "members"}) set."""
