"""The multi-task methods of `model.weighting` beyond fixed and uncertainty weights: what each head's
loss or gradient is multiplied by, step by step, so the comparison's arms differ in that alone.

- dwa (Dynamic Weight Average; Liu, Johns and Davison 2019): epoch t's weights
  λ_k = K·exp(r_k/T) / Σ_j exp(r_j/T), r_k = L_k(t-1)/L_k(t-2), the ratio of head k's mean training
  loss over the last two epochs (1 each for the first two epochs); T is `dwa_temperature`.
- rlw (Random Loss Weighting; Lin et al. 2022): each step's weights are softmax(z), z ~ N(0, I).
- upgrad (Quinton and Rey 2024) and pcgrad (Yu et al. 2020): one gradient per head on the shared
  layers, aggregated by torchjd's `UPGrad` / `PCGrad`; each head's own layers get its own gradient.

`loss_weights` stay priors under every method: they scale each head's loss first, and a head
weighing 0 is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mhtrain import ConfigError
from mhtrain.models.dropout import GOLDEN, mix_int

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

GRADIENT_METHODS = ("upgrad", "pcgrad")
STEPPED = ("dwa", "rlw", *GRADIENT_METHODS)  # the methods this module weighs, step by step
# What each method does beyond fixed weights, in the words a refusal uses
ABOUT = {"uncertainty": "learns one log-variance per head outside the network",
         "dwa": "sets each epoch's weights from the heads' last two epoch losses",
         "rlw": "draws random weights every step",
         "upgrad": "aggregates one gradient per head with torchjd's UPGrad",
         "pcgrad": "aggregates one gradient per head with torchjd's PCGrad"}


def dwa_weights(history: torch.Tensor, temperature: float, active: torch.Tensor) -> torch.Tensor:
    """DWA's λ [H] from the last two epochs' mean head losses `history` [2, H] (NaN before an
    epoch has ended): K·softmax(r/T) over the `active` heads (K of them), 0 elsewhere; 1 each
    until two epochs have ended."""
    if torch.isnan(history[:, active]).any():
        return active.to(history.dtype)
    rates = torch.where(active, history[1] / history[0], torch.tensor(float("-inf"), device=history.device))
    return int(active.sum()) * torch.softmax(rates / temperature, 0)


def rlw_weights(n: int, seed: int, step: int) -> torch.Tensor:
    """RLW's weights [n] at `step` of the run seeded `seed`: softmax of n standard normal draws,
    from a generator of their own (keyed by seed and step, so the run's batches, dropout masks and
    a resumed run's draws are what they would have been)."""
    g = torch.Generator().manual_seed(mix_int(mix_int(seed * GOLDEN - 1) + step * GOLDEN))
    return torch.softmax(torch.randn(n, generator=g), 0)


def aggregator(method: str) -> Aggregator:
    """torchjd's aggregator for a gradient method (imported only when one trains)."""
    from torchjd.aggregation import PCGrad, UPGrad

    return {"upgrad": UPGrad, "pcgrad": PCGrad}[method]()


class StepWeights(nn.Module):
    """The state of a stepped method: DWA's loss history and this epoch's λ (saved with the
    weights; set once an epoch, so a step reads no value back from the device) and the running
    mean of the multipliers used this training epoch, which `train/weight_<head>` reports."""

    def __init__(self, method: str, priors: torch.Tensor, seed: int, dwa_temperature: float) -> None:
        super().__init__()
        if not dwa_temperature > 0:
            raise ConfigError(f"model.dwa_temperature={dwa_temperature}: must be > 0 (the paper uses 2.0)")
        self.method, self.seed, self.temperature = method, seed, float(dwa_temperature)
        self.register_buffer("priors", priors.clone(), persistent=False)
        if method == "dwa":
            self.register_buffer("loss_history", torch.full((2, len(priors)), float("nan")))
            self.register_buffer("dwa_lambda", self.active.to(priors.dtype))
        self.register_buffer("sums", torch.zeros(len(priors)), persistent=False)
        self.count = 0
        self.aggregator = aggregator(method) if method in GRADIENT_METHODS else None

    @property
    def active(self) -> torch.Tensor:
        return self.priors > 0

    def multipliers(self, step: int) -> torch.Tensor:
        """What multiplies each head's loss in this step's scalar loss (priors x the method's
        weights); a gradient method's scalar is the plain prior-weighted sum."""
        if self.method == "dwa":
            return self.priors * self.dwa_lambda
        if self.method == "rlw":
            return self.priors * rlw_weights(len(self.priors), self.seed, step).to(self.priors.device)
        return self.priors

    def record(self, weights: torch.Tensor) -> None:
        """Add one step's multipliers (for a gradient method, those its aggregator chose)."""
        self.sums += weights.detach()
        self.count += 1

    def mean(self) -> torch.Tensor:
        """This epoch's mean multipliers so far; before any step, what the first step would use
        (DWA's and a gradient method's, the priors; RLW's expectation, priors/K)."""
        if self.count:
            return self.sums / self.count
        return self.priors / len(self.priors) if self.method == "rlw" else self.multipliers(0)

    def start_epoch(self) -> None:
        self.sums.zero_()
        self.count = 0

    def end_epoch(self, head_losses: Sequence[float] | torch.Tensor) -> None:
        """DWA: roll the history on by this epoch's mean training loss per head; the next
        epoch's λ follows from it."""
        if self.method == "dwa":
            new = torch.as_tensor(head_losses, dtype=self.loss_history.dtype, device=self.loss_history.device)
            self.loss_history.copy_(torch.stack([self.loss_history[1], new]))
            self.dwa_lambda.copy_(dwa_weights(self.loss_history, self.temperature, self.active))


def aggregated_backward(losses: Sequence[torch.Tensor], features: torch.Tensor, net: nn.Module,
                        heads: Sequence[str], aggregator_: Aggregator,
                        scale: torch.Tensor | None = None) -> torch.Tensor:
    """Backward for a gradient method: each head's layers get the gradient of its own loss, the
    shared layers the aggregation of the heads' gradients (torchjd's `mtl_backward`, one Jacobian
    row per head, then `jac_to_grad`). `scale` multiplies every row (Lightning's loss scaling or
    accumulation); the aggregators are positively homogeneous, so the result scales with it.
    Returns the aggregator's weight of each row (the same whatever `scale` is)."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    head_params = {id(p) for p in net.heads.parameters()}  # a head left out is no shared layer
    shared = [p for p in net.parameters() if id(p) not in head_params and p.requires_grad]
    grads = None if scale is None else [scale.expand_as(loss) for loss in losses]
    mtl_backward(list(losses), features=features, grad_tensors=grads, shared_params=shared,
                 tasks_params=[list(net.heads[h].parameters()) for h in heads])
    return jac_to_grad(shared, aggregator_)
