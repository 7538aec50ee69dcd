"""Training throughput of `fit()` against a plain PyTorch loop, and the cost of a second `fit()`.

Both loops train the same multihead model on the same tensor batches with the same thread count,
in this one process, so the ratio is fair. Targets: ratio >= 0.95; second-fit overhead < 0.5 s.

    python bench/throughput.py [--train-subset 20000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import time

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from mhtrain.config import build_model, compose
from mhtrain.train import fit


class Clock(Callback):
    """Time from fit() call to the first training batch, and per training epoch."""

    def __init__(self, called_at: float) -> None:
        self.called_at, self.first_batch, self.epoch_start = called_at, None, 0.0
        self.epoch_seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter() - self.called_at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self.epoch_start)


def plain_loop(cfg, epochs: int) -> list[float]:
    """The same model, optimizer, batches and weighted loss, without Lightning."""
    L.seed_everything(cfg.seed, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = build_model(cfg)
    net, weights = model.net.train(), model.loss_weights
    opt = torch.optim.Adam(net.parameters(), lr=cfg.model.optimizer.lr)
    ce = torch.nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, ys in dm.train_dataloader():
            logits = net(x)
            loss = sum(weights[h] * ce(logits[h], ys[h]) for h in logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    overrides = [f"data.train_subset={args.train_subset}", "data.val_subset=1000",
                 f"trainer.max_epochs={args.epochs}", "test=false", "trainer.enable_progress_bar=false",
                 "callbacks.model_checkpoint=null", "callbacks.early_stopping=null",
                 "paths.output_dir=runs/bench/throughput"]
    cfg = compose("multihead_cnn_mnist", overrides)
    n = args.train_subset
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device cpu; batch {cfg.data.batch_size}, "
          f"{n} training images x {args.epochs} epochs (first epoch of each is warm-up)")

    plain = plain_loop(cfg, args.epochs)
    clocks = []
    for _ in range(2):
        clock = Clock(time.perf_counter())
        fit(cfg, callbacks=[clock])
        clocks.append(clock)
    # the last epoch of each: allocator and caches warm
    plain_sps = n / plain[-1]
    fit_sps = n / clocks[1].epoch_seconds[-1]
    print(f"plain PyTorch loop : {plain_sps:8.0f} samples/s")
    print(f"mhtrain fit()      : {fit_sps:8.0f} samples/s")
    print(f"ratio fit/plain    : {fit_sps / plain_sps:8.3f}   (target >= 0.95)")
    print(f"first fit(): call -> first training step  {clocks[0].first_batch:.3f} s (reads the files)")
    print(f"second fit(): call -> first training step {clocks[1].first_batch:.3f} s (target < 0.5 s)")


if __name__ == "__main__":
    main()
