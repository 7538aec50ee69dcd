"""K networks of one architecture run as one: parameters in one flat [K, P] tensor, buffers
stacked [K, ...], the forward pass `vmap`-ed over `functional_call` of a parameterless copy."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from mhtrain import ConfigError


class MemberDropout(nn.Module):
    """Dropout whose rate is a buffer, so each stacked member carries its own rate; under
    `vmap(randomness="different")` each member draws its own mask (as independent runs do)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand_like(x) >= self.p
        scale = torch.where(self.p < 1, (1 - self.p).reciprocal(), torch.zeros_like(self.p))
        return x * (keep * scale)


def member_dropout(net: nn.Module) -> nn.Module:
    """`net` with every nn.Dropout replaced by a MemberDropout of the same rate (in place)."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(net, name, MemberDropout(child.p))
        else:
            member_dropout(child)
    return net


class StackedNets:
    """The layout of one architecture's parameters in a flat row, and its stacked forward pass.

    A member's row holds its parameters in `named_parameters()` order; `views` splits a [K, P]
    tensor back into [K, *shape] parameters without copying, so the optimizer updates one flat
    tensor and autograd accumulates one flat gradient.
    """

    def __init__(self, net: nn.Module) -> None:
        base = member_dropout(copy.deepcopy(net)).to("meta")
        if hasattr(base, "memory_format"):
            # a memory-format request cannot be honoured inside vmap; the values are the same
            base.memory_format = torch.contiguous_format
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]
        self.shapes = [p.shape for _, p in base.named_parameters()]
        self.sizes = [p.numel() for _, p in base.named_parameters()]
        self.buffer_shapes = {n: (b.shape, b.dtype) for n, b in base.named_buffers()}

    def row(self, net: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One member's flat parameters [P] and buffers, exactly as its own network holds them."""
        net = member_dropout(net)
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())
        if list(params) != self.names or [p.shape for p in params.values()] != self.shapes or {
                n: (b.shape, b.dtype) for n, b in buffers.items()} != self.buffer_shapes:
            raise ConfigError("a member's network differs in shape from the population's; only "
                              "values that leave shapes alone may vary between members")
        flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
        return flat, {n: b.detach().clone() for n, b in buffers.items()}

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        parts = flat.split(self.sizes, dim=1)
        return {n: part.view(k, *shape) for n, part, shape in zip(self.names, parts, self.shapes,
                                                                    strict=True)}

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def forward(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor],
                x: torch.Tensor, shared_input: bool = False) -> dict[str, torch.Tensor]:
        """Every member's output: x is [K, B, ...] (one batch per member) or, with
        `shared_input`, [B, ...] seen by all; each output is [K, B, ...]."""

        def one(params, bufs, xs):
            return functional_call(self.base, (params, bufs), (xs,))

        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="different")(
            self.views(flat), buffers, x)
