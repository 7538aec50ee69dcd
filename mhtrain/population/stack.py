"""K networks of one architecture run as one: parameters in one flat [K, P] tensor, buffers
stacked [K, ...], the forward pass `vmap`-ed over `functional_call` of a parameterless copy.

The flat row (rather than `torch.func.stack_module_state`'s dict of [K, ...] tensors) lets the
optimizer update every parameter of every member with one kernel per operation and autograd
accumulate one gradient tensor; `views` gives the dict `functional_call` wants without copying.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from mhtrain.population.check import check_layout, check_net, layout

MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment and finaliser constants
MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def mix_int(z: int) -> int:
    """`mix` on a Python int (as int64): a member's streams are made without tensors."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * (MIX1 & MASK64)) & MASK64
    z = ((z ^ (z >> 27)) * (MIX2 & MASK64)) & MASK64
    return _signed(z ^ (z >> 31))


def mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps; shifts made logical)."""
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * MIX1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * MIX2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


class MemberDropout(nn.Module):
    """Dropout with a rate and a random stream of its own per member, both buffers.

    The mask is a counter-based hash of (stream, draw count, element): a member's masks depend on
    its seed and its own steps only, never on which members train beside it, how many there are
    or who joins; drawing them reads no global generator, needs no `vmap` randomness and no sync.
    """

    def __init__(self, p: float, stream: int = 0) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))
        self.register_buffer("stream", torch.tensor(stream, dtype=torch.int64))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        self.draws.add_(1)
        counter = mix(self.stream + self.draws * GOLDEN)
        idx = torch.arange(1, x.numel() + 1, device=x.device).view(x.shape)
        bits = (mix(counter + idx * GOLDEN) >> 40) & ((1 << 24) - 1)  # 24 uniform bits
        keep = bits.to(torch.float32) * 2.0**-24 >= self.p
        scale = torch.where(self.p < 1, (1 - self.p).reciprocal(), torch.zeros_like(self.p))
        return x * (keep * scale).to(x.dtype)


class MemberBatchNorm(nn.Module):
    """BatchNorm with the same parameters and buffers, normalising in their dtype (float32).

    Under bf16 autocast a convolution hands BatchNorm a bf16 input; a plain BatchNorm handles
    the bf16/float32 mix, but functorch's batching rule for it does not ("expected scalar type
    BFloat16 but found Float"). Casting in and out gives what a solo run's cuDNN BatchNorm
    gives (float32 statistics, output in the input's dtype) and costs nothing without autocast.
    """

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


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def member_layers(net: nn.Module, seed: int = 0) -> nn.Module:
    """`net` (changed in place) with each nn.Dropout a MemberDropout of the same rate, its i-th
    one drawing from stream (seed, i), and each BatchNorm a MemberBatchNorm."""
    dropouts = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MemberDropout(child.p, mix_int(seed * GOLDEN + dropouts)))
                dropouts += 1
            elif isinstance(child, BATCH_NORMS):
                setattr(parent, name, MemberBatchNorm(child))
    return net


class StackedNets:
    """The layout of one architecture's parameters in a flat row, and its stacked forward pass.

    A member's row holds its parameters in `named_parameters()` order; `views` splits a [K, P]
    tensor back into [K, *shape] parameters without copying, so the optimizer updates one flat
    tensor and autograd accumulates one flat gradient.
    """

    def __init__(self, net: nn.Module) -> None:
        check_net(net)
        base = member_layers(copy.deepcopy(net)).to("meta")
        if hasattr(base, "memory_format"):
            # a memory-format request cannot be honoured inside vmap; the values are the same
            base.memory_format = torch.contiguous_format
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]
        self.shapes = [p.shape for _, p in base.named_parameters()]
        self.sizes = [p.numel() for _, p in base.named_parameters()]
        self.layout = layout(base)

    def row(self, net: nn.Module, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One member's flat parameters [P] and buffers, exactly as its own network holds them
        (its dropout streams drawn from `seed`); the member's network is left as it is."""
        check_net(net)
        net = member_layers(copy.deepcopy(net), seed)
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())
        check_layout(self.layout, layout(net))
        flat = torch.cat([torch.zeros(0), *(p.detach().reshape(-1) for p in params.values())])
        return flat, {n: b.detach().clone() for n, b in buffers.items()}

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.sizes:
            return {}
        k = flat.shape[0]
        parts = flat.split(self.sizes, dim=1)
        return {n: part.view(k, *shape) for n, part, shape in zip(self.names, parts, self.shapes,
                                                                    strict=True)}

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def forward(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor],
                x: torch.Tensor, shared_input: bool = False) -> dict[str, torch.Tensor]:
        """Every member's output: x is [K, B, ...] (one batch per member) or, with
        `shared_input`, [B, ...] seen by all; each output is [K, B, ...]. Any random operation
        other than MemberDropout's is an error (`randomness="error"`)."""

        def one(params, bufs, xs):
            return functional_call(self.base, (params, bufs), (xs,))

        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="error")(
            self.views(flat), buffers, x)
