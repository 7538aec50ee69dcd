"""What one training run ends with, solo or as a population member: one frozen type, read by
attribute, so the study, the comparison and the benchmarks agree on its fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mhtrain.contract import best_of

STOPS = ("max_epochs", "early_stopping", "pruned", "stopped")


def _floats(d: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}


@dataclass(frozen=True)
class FitResult:
    """One run's measurements.

    `history` holds each validation epoch's `val/…` metrics and `train_history` each training
    epoch's `train/…` ones (loss weights included); `best` is `best_of(history)`. `stopped` says
    why training ended: its `max_epochs`, `early_stopping`, `pruned` (a pruner said so) or
    `stopped` (a callback ended it, e.g. a Ctrl-C). `population` is set for a population member:
    the epoch it joined at and how many members trained when it did.
    """

    history: tuple[Mapping[str, float], ...]
    train_history: tuple[Mapping[str, float], ...]
    test: Mapping[str, float]
    seconds: float
    params: int
    heads: tuple[str, ...]
    output_dir: str
    stopped: str = "max_epochs"
    checkpoint: str | None = None  # the best epoch's weights, when the run kept them
    population: Mapping[str, Any] | None = None
    trained: float | None = None  # epochs trained, a fraction when a sub-epoch report stopped it
    best: Mapping[str, float] = field(init=False)

    def __post_init__(self) -> None:
        if self.stopped not in STOPS:
            raise ValueError(f"stopped={self.stopped!r}: one of {STOPS}")
        # copies of plain types: the result pickles, and no caller's dict changes it later
        settle = object.__setattr__
        settle(self, "history", tuple(_floats(e) for e in self.history))
        settle(self, "train_history", tuple(_floats(e) for e in self.train_history))
        settle(self, "test", _floats(self.test))
        settle(self, "heads", tuple(self.heads))
        settle(self, "best", best_of(self.history))
        if self.population is not None:
            settle(self, "population", dict(self.population))

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def compute(self) -> float:
        """Epochs of training paid for: `trained` when known (a run stopped mid-epoch paid for
        part of one), else the epochs validated."""
        if self.trained is None:
            return self.epochs
        return int(self.trained) if float(self.trained).is_integer() else round(self.trained, 3)

    @property
    def final(self) -> Mapping[str, float]:
        return self.history[-1] if self.history else {}
