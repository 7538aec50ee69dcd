"""The baseline every throughput figure is a ratio against: one epoch of the same model,
optimizer, batches and weighted loss in a bare PyTorch loop, without Lightning (torch only, so
the GPU bench can use it on a machine without Hydra or Optuna)."""

from __future__ import annotations

import time

import torch


def sync() -> None:
    """Wait for queued GPU work, so a timer measures it; nothing on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_epoch(net: torch.nn.Module, batches, weights: dict[str, float], lr: float) -> float:
    """Seconds of one epoch of `net` trained with Adam on the weighted sum of its heads' losses."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ce = torch.nn.CrossEntropyLoss()
    net.train()
    sync()
    start = time.perf_counter()
    for x, ys in batches:
        logits = net(x)
        loss = sum(weights[h] * ce(logits[h], ys[h]) for h in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - start
