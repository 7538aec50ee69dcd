"""The Lightning side of a population: steps are the `Stack`'s, epoch boundaries the `MemberRun`s'."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mhtrain.data.datamodule import MemberBatches, TensorDataModule
from mhtrain.pbt import Controller, Pbt
from mhtrain.population.check import check_model
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.runs import MemberRun
from mhtrain.population.stacked import Stack


class PopulationModule(L.LightningModule):
    """Trains up to `k` members of `source` at once, manually; the stack is no submodule (no parameters)."""

    def __init__(self, datamodule: TensorDataModule, source: MemberSource, k: int,
                 first: list[Member], pbt: Pbt | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.data, self.source, self.k = datamodule, source, k
        self.stack = Stack(first[0].model)
        self.heads = self.stack.heads
        self.runs: list[MemberRun] = []
        self._pending, self._val, self._epoch = first, {}, 0
        self.admitted = 0  # members trained so far
        self.pbt = Controller(pbt) if pbt is not None else None

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
        return self.stack.train_step(*batch, backward=self.manual_backward)  # [K]: outputs["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.stack.val_step(*batch)  # the same validation batch for every member

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
        if self.pbt is not None:  # after the leavers went: only members that go on take part
            self.pbt.step(self.stack, self.runs)
        if not self.runs:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        """Members still training when something else stopped the Trainer end as `stopped`."""
        for run in self.runs:
            self.source.finish(run.member, run.result(self.heads))
        self.runs = []

    def _restack(self, keep: list[int], new: list[Member]) -> None:
        """Survivors (in order, with their schedulers' lrs) followed by the newcomers."""
        runs, rows = [self.runs[i] for i in keep], []
        for member in new:
            check_model(member.model, self.heads, member.early_stopping)
            run, args = MemberRun.begin(member, self._epoch)
            runs.append(run)
            rows.append((self.stack.member_rows(member.model, member.seed), args))
        self.stack.restack(keep, [run.optimizer.param_groups[0]["lr"] for run in runs[:len(keep)]], rows)
        for run in runs[len(keep):]:
            run.size = len(runs)
        self.runs, self.admitted = runs, self.admitted + len(new)


def _lists(values: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per-member metric values on the host, in one read-back (the epoch boundary's sync)."""
    rows = torch.stack([v.float() for v in values.values()]).tolist()
    return dict(zip(values, rows, strict=True))
