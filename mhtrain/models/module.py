"""MultiheadLitModule: weighted per-head losses and the metric contract (README, "Metric contract")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric

from mhtrain import ConfigError
from mhtrain.contract import SPLITS, check_loss_weights, check_weighting, metric_key
from mhtrain.models.dropout import counter_dropouts
from mhtrain.models.weighting import GRADIENT_METHODS, STEPPED, StepWeights, aggregated_backward


def epoch_metrics(split: str, heads: list[str], accs: torch.Tensor, head_losses: torch.Tensor,
                  total: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """One epoch's metric contract from its means, for one model or K stacked members alike.

    `accs`, `head_losses` and `weights` are [..., H], `total` is [...]; every value returned has
    shape [...] (a scalar for one model, [K] for a population), so both share this one code path.
    """
    values = {metric_key(split, None, "loss"): total}
    for i, h in enumerate(heads):
        values[metric_key(split, h, "acc")] = accs[..., i]
        values[metric_key(split, h, "loss")] = head_losses[..., i]
    if len(heads) > 1:
        values[metric_key(split, "avg", "acc")] = accs.mean(-1)
        values[metric_key(split, "weighted", "acc")] = (weights * accs).sum(-1) / weights.sum(-1)
    return values


def weighted_total(losses: torch.Tensor, priors: torch.Tensor,
                   log_variances: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss from per-head losses `L` [..., H] and `loss_weights` `w` [..., H].

    fixed (`log_variances` None):  total = Σ_h w_h·L_h
    uncertainty (Kendall, Gal and Cipolla 2018, the softmax-classification form, with s_h = log σ_h²
    learned):  total = Σ_h w_h·(exp(-s_h)·L_h + s_h/2)

    A head with w_h = 0 is left out of the sum: no gradient reaches it or its s_h. Under
    uncertainty `loss_weights` are priors: they scale a head's whole term, so the learned weight
    exp(-s_h) still settles where exp(-s_h) = 1/(2·L_h) and the effective weight is w_h·exp(-s_h).
    """
    terms = losses if log_variances is None else torch.exp(-log_variances) * losses + log_variances / 2
    return torch.where(priors > 0, priors * terms, torch.zeros_like(terms)).sum(-1)


def effective_weights(priors: torch.Tensor, log_variances: torch.Tensor | None = None) -> torch.Tensor:
    """What multiplies each head's loss in `weighted_total`: w_h, or w_h·exp(-s_h) when learned."""
    return priors if log_variances is None else priors * torch.exp(-log_variances.detach())


class EpochSums(nn.Module):
    """Running sums over one epoch of one split: correct predictions and summed losses per head,
    and the weighted total. One small tensor update per step keeps `fit` as fast as a plain loop.

    With `members=K` the sums are [K, 2H+1], one row per stacked member of a population, and
    `add` takes [K, H] counts and losses and a [K] total; otherwise [2H+1], [H] and a scalar.
    """

    def __init__(self, n_heads: int, members: int | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        shape = (2 * n_heads + 1,) if members is None else (members, 2 * n_heads + 1)
        self.register_buffer("totals", torch.zeros(shape), persistent=False)
        self.count = 0

    def add(self, correct: torch.Tensor, losses: torch.Tensor, total: torch.Tensor, n: int) -> None:
        self.totals += torch.cat([correct.float(), losses.detach() * n, (total.detach() * n)[..., None]], -1)
        self.count += n

    def compute_and_reset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(accuracy per head, mean loss per head, mean total loss), then zero for the next epoch."""
        means = self.totals / max(self.count, 1)
        self.totals.zero_()
        self.count = 0
        h = self.n_heads
        return means[..., :h].clone(), means[..., h : 2 * h].clone(), means[..., 2 * h].clone()


class MultiheadLitModule(L.LightningModule):
    """Trains `net` on the weighted sum of its heads' losses (`weighted_total`); logs
    `{split}/<head>_acc`, losses, avg and weighted acc, and `train/weight_<head>` each epoch.

    `heads` (name -> classes) and `input_shape` come from the data; criteria, metrics and the
    network's input and output layers all derive from them. `weighting="uncertainty"` learns one
    log-variance per head (`log_variances`, a parameter: optimized with the network and saved in
    its checkpoints, starting at 0, i.e. at the `loss_weights`). dwa, rlw, upgrad and pcgrad
    (mhtrain/models/weighting.py) weigh each step themselves (`stepped`); their logged `{split}/loss`
    stays Σ w·L with the `loss_weights`, so it compares across arms and epochs, and their
    `train/weight_<head>` is the epoch's mean multiplier. upgrad and pcgrad replace `backward`.

    The network's dropout layers draw counter-based masks keyed by `seed` (default: the seed torch
    was seeded with, the run's) and the step, so a population member draws its solo run's masks.
    """

    def __init__(self, net: Callable[..., nn.Module], heads: Mapping[str, int],
                 optimizer: Callable[..., torch.optim.Optimizer],
                 input_shape: tuple[int, int, int] = (1, 28, 28),
                 scheduler: Callable[..., Any] | None = None,
                 loss_weights: Mapping[str, float] | None = None,
                 criteria: Mapping[str, nn.Module | None] | None = None,
                 scheduler_monitor: str = "val/loss", weighting: str = "fixed",
                 dwa_temperature: float = 2.0, seed: int | None = None) -> None:
        super().__init__()
        self.head_names = list(heads)
        self.loss_weights = check_loss_weights(self.head_names, loss_weights or {})
        self.weighting = check_weighting(weighting)
        self.register_buffer("priors", torch.tensor([self.loss_weights[h] for h in self.head_names]),
                             persistent=False)
        self.log_variances = (nn.Parameter(torch.zeros(len(self.head_names)))
                              if weighting == "uncertainty" else None)
        criteria = {k: v for k, v in (criteria or {}).items() if v is not None}
        unknown = sorted(set(criteria) - set(heads))
        if unknown:
            raise ConfigError(f"model.criteria has {unknown} but the heads are {self.head_names}")
        seed = torch.initial_seed() if seed is None else seed
        self.net = counter_dropouts(net(heads=dict(heads), in_channels=input_shape[0],
                                        input_size=input_shape[1]), seed)
        self.stepped = (StepWeights(weighting, self.priors, seed, dwa_temperature)
                        if weighting in STEPPED else None)
        if weighting in GRADIENT_METHODS and not hasattr(self.net, "forward_with_features"):
            raise ConfigError(f"model.weighting={weighting} differentiates through the features the "
                              f"heads share; model.net {type(self.net).__name__} has no "
                              "forward_with_features: use SimpleCNN or another weighting")
        self._active = [i for i, h in enumerate(self.head_names) if self.loss_weights[h] > 0]
        self._pending: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
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

    def current_weights(self) -> torch.Tensor:
        """Each head's effective loss weight [H]: fixed, learned under uncertainty, or under a
        stepped method this training epoch's mean multiplier so far."""
        if self.stepped is not None:
            return self.stepped.mean()
        return effective_weights(self.priors, self.log_variances)

    def weights(self) -> dict[str, float]:
        """`current_weights` by head name."""
        return dict(zip(self.head_names, self.current_weights().tolist(), strict=True))

    def _step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], split: str,
              sums: EpochSums | None = None,
              features: bool = False) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Each head's loss and the logged total, counted into the split's sums; with `features`,
        also the shared features the heads read (for a gradient method)."""
        x, targets = batch
        logits, shared = self.net.forward_with_features(x) if features else (self(x), None)
        per_head = [self.criteria[h](logits[h], targets[h]) for h in self.head_names]
        losses = torch.stack(per_head)
        total = weighted_total(losses, self.priors, self.log_variances)
        with torch.no_grad():
            correct = torch.stack([(logits[h].argmax(1) == targets[h]).sum() for h in self.head_names])
            (sums or self.sums[f"{split}_sums"]).add(correct, losses, total, len(x))
        return per_head, total, shared

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
        """The `val/…` metrics of the model as it is now, mid-epoch: a sub-epoch pruning report
        reads them. Eval mode draws no dropout mask and moves no BatchNorm statistic, and the
        epoch's own sums are not touched, so training goes on exactly as it would have."""
        was_training = self.training
        sums = EpochSums(len(self.head_names)).to(self.device)
        self.eval()
        try:
            for x, targets in batches:
                self._step((x.to(self.device), {h: t.to(self.device) for h, t in targets.items()}),
                           "val", sums)
        finally:
            self.train(was_training)
        accs, head_losses, total = sums.compute_and_reset()
        return epoch_metrics("val", self.head_names, accs, head_losses, total, self.current_weights())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The loss Lightning back-propagates: the logged total, or a stepped method's sum
        (a gradient method's `backward` aggregates the heads' losses kept here instead)."""
        gradient = self.weighting in GRADIENT_METHODS
        losses, total, features = self._step(batch, "train", features=gradient)
        if gradient:
            self._pending = (losses, features, total)
        if self.stepped is None or gradient:
            return total
        multipliers = self.stepped.multipliers(self.global_step)
        self.stepped.record(multipliers)
        return weighted_total(torch.stack(losses), multipliers)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward, or a gradient method's: the shared layers get the aggregation of
        the active heads' prior-weighted gradients, each head's layers its own gradient."""
        if self._pending is None:
            return super().backward(loss, *args, **kwargs)
        losses, features, total = self._pending
        self._pending = None
        # what Lightning made of the returned total (divided for accumulation, scaled for AMP); a
        # zero total (every loss exactly 0) has zero gradients whatever the scale
        scale = None if loss is total else torch.where(total != 0, loss / total, 1.0).detach()
        on = self._active
        weights = aggregated_backward([self.priors[i] * losses[i] for i in on], features, self.net,
                                      [self.head_names[i] for i in on], self.stepped.aggregator, scale)
        used = torch.zeros_like(self.priors)
        used[on] = self.priors[on] * weights.to(self.priors)
        self.stepped.record(used)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        accs, head_losses, total = self.sums[f"{split}_sums"].compute_and_reset()
        return epoch_metrics(split, self.head_names, accs, head_losses, total, self.current_weights())

    def on_train_epoch_start(self) -> None:
        if self.stepped is not None:
            self.stepped.start_epoch()

    def on_train_epoch_end(self) -> None:
        weights = {metric_key("train", h, "weight"): w for h, w in self.weights().items()}
        values = self._epoch_metrics("train")
        self.log_dict({**values, **weights})
        if self.stepped is not None:
            self.stepped.end_epoch(torch.stack([values[metric_key("train", h, "loss")]
                                                for h in self.head_names]))

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_metrics("val")
        if self.trainer.sanity_checking:
            return
        primary = metric_key("val", self.primary, "acc")
        self.acc_best.update(values[primary])
        values[metric_key("val", None, "acc_best")] = self.acc_best.compute()
        shown = {primary, metric_key("val", None, "acc_best")}
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
