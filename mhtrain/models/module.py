"""MultiheadLitModule: weighted per-head losses and the metric contract of DESIGN.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric

from mhtrain import ConfigError

SPLITS = ("train", "val", "test")


def metric_names(heads: list[str], splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Every metric a model with these heads logs; checked against a study's metric up front."""
    names = ["val/acc_best"] if "val" in splits else []
    for split in splits:
        names += [f"{split}/loss"]
        names += [f"{split}/{h}_{kind}" for h in heads for kind in ("acc", "loss")]
        if len(heads) > 1:
            names += [f"{split}/avg_acc", f"{split}/weighted_acc"]
    return names


def check_loss_weights(heads: list[str], loss_weights: Mapping[str, float]) -> dict[str, float]:
    """Complete `loss_weights` (missing heads weigh 1.0), rejecting what cannot train."""
    unknown = sorted(set(loss_weights) - set(heads))
    if unknown:
        raise ConfigError(
            f"model.loss_weights has {unknown} but the heads are {heads}; "
            "remove the key or declare the head in data.heads"
        )
    weights = {h: float(loss_weights.get(h, 1.0)) for h in heads}
    negative = {h: w for h, w in weights.items() if w < 0}
    if negative:
        raise ConfigError(f"model.loss_weights {negative}: weights must be >= 0")
    if not any(weights.values()):
        raise ConfigError(f"model.loss_weights are all zero ({weights}): nothing would train")
    return weights


class EpochSums(nn.Module):
    """Running sums over one epoch of one split: correct predictions and summed losses per head,
    and the weighted total. One small tensor update per step keeps `fit` as fast as a plain loop."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("totals", torch.zeros(2 * n_heads + 1), persistent=False)
        self.count = 0

    def add(self, correct: torch.Tensor, losses: torch.Tensor, total: torch.Tensor, n: int) -> None:
        self.totals += torch.cat([correct.float(), losses.detach() * n, (total.detach() * n).view(1)])
        self.count += n

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(accuracy per head, mean loss per head, mean total loss), then reset for the next epoch."""
        means = self.totals / max(self.count, 1)
        self.totals.zero_()
        self.count = 0
        h = self.n_heads
        return means[:h].clone(), means[h : 2 * h].clone(), means[2 * h].clone()


class MultiheadLitModule(L.LightningModule):
    """Trains `net` on Σ w·L over heads; logs `{split}/<head>_acc`, losses, avg and weighted acc.

    `heads` (name -> classes) and `input_shape` come from the data; criteria, metrics and the
    network's input and output layers all derive from them.
    """

    def __init__(self, net: Callable[..., nn.Module], heads: Mapping[str, int],
                 optimizer: Callable[..., torch.optim.Optimizer],
                 input_shape: tuple[int, int, int] = (1, 28, 28),
                 scheduler: Callable[..., Any] | None = None,
                 loss_weights: Mapping[str, float] | None = None,
                 criteria: Mapping[str, nn.Module | None] | None = None,
                 scheduler_monitor: str = "val/loss") -> None:
        super().__init__()
        self.head_names = list(heads)
        self.loss_weights = check_loss_weights(self.head_names, loss_weights or {})
        criteria = {k: v for k, v in (criteria or {}).items() if v is not None}
        unknown = sorted(set(criteria) - set(heads))
        if unknown:
            raise ConfigError(f"model.criteria has {unknown} but the heads are {self.head_names}")
        self.net = net(heads=dict(heads), in_channels=input_shape[0], input_size=input_shape[1])
        self.criteria = nn.ModuleDict(
            {h: criteria.get(h) or nn.CrossEntropyLoss() for h in self.head_names})
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_monitor = scheduler_monitor
        self.sums = nn.ModuleDict({f"{split}_sums": EpochSums(len(heads)) for split in SPLITS})
        self.acc_best = MaxMetric()
        self.example_input_array = torch.zeros(2, *input_shape)

    @property
    def primary(self) -> str:
        return self.head_names[0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], split: str) -> torch.Tensor:
        x, targets = batch
        logits = self(x)
        losses = [self.criteria[h](logits[h], targets[h]) for h in self.head_names]
        # a zero weight leaves its head out of the sum: no gradient reaches that head
        total = sum((self.loss_weights[h] * loss for h, loss in zip(self.head_names, losses, strict=True)
                     if self.loss_weights[h]), x.new_zeros(()))
        with torch.no_grad():
            correct = torch.stack([(logits[h].argmax(1) == targets[h]).sum() for h in self.head_names])
            self.sums[f"{split}_sums"].add(correct, torch.stack(losses), total, len(x))
        return total

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        accs, head_losses, total = self.sums[f"{split}_sums"].compute()
        values = {f"{split}/loss": total}
        for i, h in enumerate(self.head_names):
            values[f"{split}/{h}_acc"] = accs[i]
            values[f"{split}/{h}_loss"] = head_losses[i]
        if len(self.head_names) > 1:
            weights = accs.new_tensor([self.loss_weights[h] for h in self.head_names])
            values[f"{split}/avg_acc"] = accs.mean()
            values[f"{split}/weighted_acc"] = (weights * accs).sum() / weights.sum()
        return values

    def on_train_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("train"))

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_metrics("val")
        if self.trainer.sanity_checking:
            return
        self.acc_best.update(values[f"val/{self.primary}_acc"])
        values["val/acc_best"] = self.acc_best.compute()
        shown = {f"val/{self.primary}_acc", "val/acc_best"}
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown})

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("test"))

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor}}
