"""Counter-based dropout: a mask that is a hash of (stream, draw, element), so a run's masks
depend on its seed and its step count alone. A solo model and a population member draw the same
masks (the stack runs this very module per member under `vmap`), with no generator, no vmap
randomness and no host sync."""

from __future__ import annotations

import torch
from torch import nn

MASK64 = (1 << 64) - 1
# splitmix64's increment and finaliser constants, as int64
GOLDEN, MIX1, MIX2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def mix_int(z: int) -> int:
    """`mix` on a Python int (as int64): a run's streams are made without tensors."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * (MIX1 & MASK64)) & MASK64
    z = ((z ^ (z >> 27)) * (MIX2 & MASK64)) & MASK64
    z ^= z >> 31
    return z - (1 << 64) if z >= 1 << 63 else z


def mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps; shifts made logical)."""
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * MIX1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * MIX2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def stream(seed: int, i: int) -> int:
    """The stream of a run's i-th dropout layer."""
    return mix_int(seed * GOLDEN + i)


class CounterDropout(nn.Module):
    """Dropout whose rate and stream are buffers (a population stacks them as per-member rows) and
    whose `draws` counts the training forwards (saved with the weights: a resumed run goes on)."""

    def __init__(self, p: float, stream: int = 0) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
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


def counter_dropouts(net: nn.Module, seed: int) -> nn.Module:
    """In place: each plain nn.Dropout of `net` a CounterDropout, the i-th on `stream(seed, i)`."""
    i = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, CounterDropout(child.p, stream(seed, i)))
                i += 1
    return net
