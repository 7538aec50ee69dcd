"""The one instrument every tool in bench/peers.py trains with: a Lightning callback, first in the
Trainer's list, that appends to a JSON-lines file when a fit starts, when its first training batch
starts, and at each validation end (the cumulative seconds inside training and validation batches,
and `val/digit_acc`). Records are written as they happen, so a trial its tool stops mid-fit (a
pruned trial, a Ray actor that is killed) has left all it measured. It imports Lightning only (it
also runs in the seed repository's environment, which has no mhtrain)."""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # an environment with the older package name only
    from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]

ENV = "MHTRAIN_PEERS_CLOCK"  # the file, when the tool builds the callback from a config
METRIC = "val/digit_acc"
_fits = itertools.count()


class BatchClock(Callback):
    """Seconds inside training and validation batches (sanity checks excluded) and the metric at
    each validation end, for the fit it is attached to. `tag` names the trial where the tool
    restarts one trial in several fits (Ray's PBT)."""

    def __init__(self, path: str | None = None, tag: str = "", metric: str = METRIC) -> None:
        self.path, self.tag, self.metric = path or os.environ.get(ENV, ""), tag, metric
        self.fit = f"{os.getpid()}-{next(_fits)}"
        self.batches, self.epochs, self._t0, self._first = 0.0, 0, 0.0, True

    def _write(self, **record: Any) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"fit": self.fit, "tag": self.tag, "t": time.time(), **record}) + "\n")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._write(event="start")

    def _begin(self, trainer: Any) -> None:
        if not trainer.sanity_checking:
            self._t0 = time.perf_counter()

    def _end(self, trainer: Any) -> None:
        if not trainer.sanity_checking:
            self.batches += time.perf_counter() - self._t0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._first:
            self._first = False
            self._write(event="first_batch", epoch=trainer.current_epoch)
        self._begin(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._end(trainer)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.epochs:
            self._write(event="epoch_start", epoch=trainer.current_epoch)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._begin(trainer)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self.epochs += 1
        value = trainer.callback_metrics.get(self.metric)
        self._write(event="val", batches=self.batches, epoch=trainer.current_epoch + 1,
                    acc=None if value is None else float(value))
