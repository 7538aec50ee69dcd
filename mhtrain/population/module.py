"""PopulationModule: the Lightning side of a population. A Trainer drives it through epochs
and batches; each step is the `Stack`'s (the stacked math), each epoch boundary the members'
`MemberRun`s' (the bookkeeping): members report, leave, and newcomers take their rows.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mhtrain.data.datamodule import MemberBatches, TensorDataModule
from mhtrain.population.check import check_model
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.runs import MemberRun
from mhtrain.population.stacked import Stack


class PopulationModule(L.LightningModule):
    """Trains up to `k` members of one architecture at once on `datamodule`'s data.

    Members come from `source` (first `first`, then more whenever one leaves); each reports its
    val metrics to `source` after every epoch and leaves when pruned, early-stopped or at its
    `max_epochs`. Optimization is manual: one backward through the stacked network and one
    stacked Adam step per batch. The stacked network is no submodule (its template lives on the
    meta device; the rows are the state), so the module itself has no parameters.
    """

    def __init__(self, datamodule: TensorDataModule, source: MemberSource, k: int,
                 first: list[Member]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.data, self.source, self.k = datamodule, source, k
        self.stack = Stack(first[0].model)
        self.heads = self.stack.heads
        self.runs: list[MemberRun] = []
        self._pending, self._val, self._epoch = first, {}, 0
        self.admitted = 0  # members trained so far

    # -- data: the datamodule's batches on this Trainer's device, one order per member
    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.trainer = self.trainer
        self.data.setup("fit")

    def train_dataloader(self) -> MemberBatches:
        return MemberBatches(self.data.train_dataloader(), lambda: [r.generator for r in self.runs])

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def configure_optimizers(self) -> None:
        return None  # the stacked Adam lives in the stack's rows (manual optimization)

    # -- steps: the stack's, nothing per member
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, targets = batch
        return self.stack.train_step(x, targets, self.manual_backward)  # [K]: outputs["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = batch  # the same validation batch for every member
        self.stack.val_step(x, targets)

    def on_train_epoch_start(self) -> None:
        self.stack.train(True)

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self.stack.train(False)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self.stack.train(True)

    # -- members come and go at epoch boundaries
    def on_fit_start(self) -> None:
        self.stack.to(self.device)
        self._restack([], self._pending)
        self._pending = []

    def on_validation_epoch_end(self) -> None:
        self._val = _lists(self.stack.epoch_metrics("val"))

    def on_train_epoch_end(self) -> None:
        train, val = _lists(self.stack.epoch_metrics("train")), self._val
        batches = self.trainer.num_training_batches
        keep = []
        for i, run in enumerate(self.runs):
            row = {k: v[i] for k, v in train.items()}, {k: v[i] for k, v in val.items()}
            if run.end_epoch(*row, batches, self.heads[0], self.source.report):
                keep.append(i)
            else:
                self.source.finish(run.member, run.result(self.heads))
        self._epoch += 1
        free = self.k - len(keep)
        self._restack(keep, self.source.next(free) if free > 0 else [])
        if not self.runs:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        """Members still training when the Trainer stopped for another reason (a callback) end
        as `stopped`."""
        for run in self.runs:
            self.source.finish(run.member, run.result(self.heads))
        self.runs = []

    def _restack(self, keep: list[int], new: list[Member]) -> None:
        """Survivors (in order, with their schedulers' lrs) followed by the newcomers."""
        joining = []
        for member in new:
            check_model(member.model, self.heads, member.early_stopping)
            run, args = MemberRun.begin(member, self._epoch)
            joining.append((run, (self.stack.member_rows(member.model, member.seed), args)))
        self.stack.restack(keep, [self.runs[i].lr for i in keep], [rows for _, rows in joining])
        self.runs = [self.runs[i] for i in keep] + [run for run, _ in joining]
        self.admitted += len(joining)
        for run, _ in joining:
            run.size = len(self.runs)


def _lists(values: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per-member metric values on the host, in one read-back (the epoch boundary's sync)."""
    rows = torch.stack([v.float() for v in values.values()]).tolist()
    return dict(zip(values, rows, strict=True))
