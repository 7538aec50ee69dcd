"""K networks of one architecture run as one: parameters in one flat [K, P] tensor (not
`stack_module_state`'s dict, so Adam runs one kernel per operation and autograd accumulates one
gradient), buffers stacked [K, ...] (dropout rates, streams and draw counts among them), the
forward `vmap`-ed over `functional_call` of a meta copy."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from mhtrain.models.dropout import counter_dropouts
from mhtrain.population.check import BATCH_NORMS, check_layout, check_net, layout


class MemberBatchNorm(nn.Module):
    """BatchNorm normalising in its parameters' dtype: under bf16 autocast functorch's batching
    rule fails on a bf16 input with float32 state; casting in and out gives what a solo run's
    cuDNN BatchNorm gives (float32 statistics, output in the input's dtype)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.momentum, self.eps = bn.momentum, bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        batch_stats = self.training or self.running_mean is None
        state = next((t for t in (self.weight, self.running_mean) if t is not None), x)
        y = F.batch_norm(x.to(state.dtype), self.running_mean, self.running_var, self.weight, self.bias,
                         batch_stats, self.momentum, self.eps)
        return y.to(x.dtype)


def member_layers(net: nn.Module, seed: int = 0) -> nn.Module:
    """In place: BatchNorm a MemberBatchNorm, and each plain nn.Dropout a CounterDropout on
    `seed`'s streams (a MultiheadLitModule's net has its own already: a member draws its solo
    run's masks)."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BATCH_NORMS):
                setattr(parent, name, MemberBatchNorm(child))
    return counter_dropouts(net, seed)


class StackedNets:
    """One architecture's parameters as a flat row (in `named_parameters()` order) and its
    stacked forward pass; `views` splits [K, P] into [K, *shape] parameters without copying."""

    def __init__(self, net: nn.Module) -> None:
        check_net(net)
        base = member_layers(copy.deepcopy(net)).to("meta")
        if hasattr(base, "memory_format"):  # vmap cannot honour a memory format; values are the same
            base.memory_format = torch.contiguous_format
        self.base, self.layout = base, layout(base)
        self.shapes = {n: p.shape for n, p in base.named_parameters()}
        self.sizes = [s.numel() for s in self.shapes.values()]

    def row(self, net: nn.Module, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A copy of one member's flat parameters [P] and buffers (dropout streams from `seed`)."""
        check_net(net)
        net = member_layers(copy.deepcopy(net), seed)
        check_layout(self.layout, layout(net))
        flat = torch.cat([torch.zeros(0), *(p.detach().reshape(-1) for p in net.parameters())])
        return flat, {n: b.detach().clone() for n, b in net.named_buffers()}

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.sizes:
            return {}
        parts = flat.split(self.sizes, dim=1)
        return {n: p.view(len(flat), *s) for (n, s), p in zip(self.shapes.items(), parts, strict=True)}

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def forward(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor],
                x: torch.Tensor, shared_input: bool = False) -> dict[str, torch.Tensor]:
        """Every member's output [K, B, ...] from x [K, B, ...] (or shared [B, ...]); no other randomness."""

        def one(params, bufs, xs):
            return functional_call(self.base, (params, bufs), (xs,))

        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="error")(
            self.views(flat), buffers, x)
