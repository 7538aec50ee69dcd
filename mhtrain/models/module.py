"""MultiheadLitModule: weighted per-head losses and the metric contract of DESIGN.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

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
        self.metrics = nn.ModuleDict()
        for split in SPLITS:
            self.metrics[f"{split}_loss"] = MeanMetric()
            for h, n in heads.items():
                self.metrics[f"{split}_{h}_acc"] = MulticlassAccuracy(
                    n, average="micro", validate_args=False)
                self.metrics[f"{split}_{h}_loss"] = MeanMetric()
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
        total = x.new_zeros(())
        for h in self.head_names:
            loss = self.criteria[h](logits[h], targets[h])
            if self.loss_weights[h]:  # a zero weight sends no gradient into its head
                total = total + self.loss_weights[h] * loss
            self.metrics[f"{split}_{h}_loss"].update(loss.detach(), len(x))
            self.metrics[f"{split}_{h}_acc"].update(logits[h].detach(), targets[h])
        self.metrics[f"{split}_loss"].update(total.detach(), len(x))
        return total

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = {f"{split}/loss": self.metrics[f"{split}_loss"].compute()}
        accs = {}
        for h in self.head_names:
            accs[h] = self.metrics[f"{split}_{h}_acc"].compute()
            values[f"{split}/{h}_acc"] = accs[h]
            values[f"{split}/{h}_loss"] = self.metrics[f"{split}_{h}_loss"].compute()
        if len(self.head_names) > 1:
            values[f"{split}/avg_acc"] = torch.stack(list(accs.values())).mean()
            total_w = sum(self.loss_weights.values())
            values[f"{split}/weighted_acc"] = sum(
                self.loss_weights[h] * accs[h] for h in self.head_names) / total_w
        for name, metric in self.metrics.items():
            if name.startswith(f"{split}_"):
                metric.reset()
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
