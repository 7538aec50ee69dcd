"""Replay a hyperparameter schedule in one solo run: at given epochs set the learning rate and the
loss weights, and (to retrace a population-based-training member) switch the batch order to the
one another member drew. A PBT member's weights at its end were trained along its lineage: its
parent's run up to the copy, then its own; this callback lets `fit` retrace that path alone, so an
exported PBT answer re-runs as any configuration does. It knows no Optuna: the study side
(`mhtrain.study.replay`) turns a stored lineage into the schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from mhtrain import ConfigError
from mhtrain.pbt import LR, WEIGHTS, check_values


def batch_generator(seed: int, epochs: int, n: int) -> torch.Generator:
    """The batch-order generator of a run seeded `seed` after `epochs` epochs of `n` samples: each
    epoch draws one permutation (`TensorBatches.order`, a member's order alike)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        torch.randperm(n, generator=g)
    return g


class ScheduleReplay(Callback):
    """`schedule`: entries `{epoch: E, values: {key: value}, order: {seed: S, skip: K} | null}`,
    applied when epoch E (from 0) starts. Keys are `model.optimizer.lr` and
    `model.loss_weights.<head>`; `order` makes the epochs from E on draw the batch order of a run
    seeded S that has trained K epochs (at epoch 0 the run's own seed decides it). With
    `orders=False` the run keeps its own batch order: the schedule's values replayed on a fresh
    seed, as a confirmation run trains them."""

    def __init__(self, schedule: Sequence[Mapping[str, Any]], orders: bool = True) -> None:
        self.orders = orders
        if isinstance(schedule, DictConfig | ListConfig):
            schedule = OmegaConf.to_container(schedule, resolve=True)
        self.entries = sorted((dict(e) for e in schedule), key=lambda e: e["epoch"])
        for e in self.entries:
            check_values(f"schedule entry at epoch {e['epoch']}", e["values"])
            if e.get("order") and e["epoch"] == 0:
                raise ConfigError(f"schedule entry {e}: no order at epoch 0 (the run's seed sets it)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        heads = {WEIGHTS + h for h in pl_module.head_names}
        for e in self.entries:
            unknown = sorted(k for k in e["values"] if k.startswith(WEIGHTS) and k not in heads)
            if unknown:
                raise ConfigError(f"schedule entry at epoch {e['epoch']}: {unknown} name no head "
                                 f"of {sorted(heads)}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for e in (e for e in self.entries if e["epoch"] == trainer.current_epoch):
            values = e["values"]
            if LR in values:
                for optimizer in trainer.optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = float(values[LR])
            with torch.no_grad():
                for i, head in enumerate(pl_module.head_names):
                    if WEIGHTS + head in values:
                        pl_module.priors[i] = float(values[WEIGHTS + head])
                        pl_module.loss_weights[head] = float(values[WEIGHTS + head])
            if self.orders and e.get("order"):  # read at the epoch's first batch, after this hook
                batches = trainer.train_dataloader
                batches.generator = batch_generator(int(e["order"]["seed"]), int(e["order"]["skip"]),
                                                    len(batches.index))
