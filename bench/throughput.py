"""Training throughput of `fit()` against a plain PyTorch loop, and the cost of a second `fit()`.

Both train the same multihead model on the same tensor batches with the same thread count, in
this one process, alternating round by round so machine noise hits both alike; the medians are
compared. Targets: ratio >= 0.95; second-fit overhead (call to first training step) < 0.5 s.
Then the cost of each tracking logger: a whole fit() (call to return, validation and logging
included) with `logger=<name>` against `logger=csv`, alternating, medians. Target <= 1.03. MLflow
logs to a SQLite store under runs/bench/ unless MLFLOW_TRACKING_URI names a server.

    python bench/throughput.py [--train-subset 20000] [--rounds 3] [--loggers tensorboard,mlflow]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from lightning.pytorch.callbacks import Callback
from plain import plain_epoch

from mhtrain.config import compose
from mhtrain.train import build, fit

OUT = "runs/bench/throughput"


class Clock(Callback):
    """Seconds from fit() call to the first training step, and of the training batches alone
    (first batch start to last batch end: validation excluded)."""

    def __init__(self) -> None:
        self.called_at = time.perf_counter()
        self.first_step: float | None = None
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.start = time.perf_counter()
            self.first_step = self.start - self.called_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loggers", default="tensorboard,mlflow",
                    help="tracking loggers whose cost against csv is measured ('' for none)")
    args = ap.parse_args()
    common = [f"data.train_subset={args.train_subset}", "data.val_subset=500", "trainer.max_epochs=1",
              "test=false", "trainer.enable_progress_bar=false", "callbacks.model_checkpoint=null",
              "callbacks.early_stopping=null"]
    cfg = compose("multihead_cnn_mnist", [*common, f"paths.output_dir={OUT}"])
    n = args.train_subset
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, cpu; batch {cfg.data.batch_size}, {n} training images, {args.rounds} rounds")

    built = build(cfg)  # the datamodule and model `fit` trains, made the way it makes them
    dm, model = built.datamodule, built.model
    dm.prepare_data()
    dm.setup("fit")
    lr = cfg.model.optimizer.lr
    plain_epoch(model.net, dm.train_dataloader(), model.loss_weights, lr)  # warm-up
    plain, fitted, overhead = [], [], []
    for r in range(args.rounds + 1):
        clock = Clock()
        fit(cfg, callbacks=[clock])
        if r == 0:
            first_overhead = clock.first_step
            continue
        overhead.append(clock.first_step)
        fitted.append(n / (clock.end - clock.start))
        plain.append(n / plain_epoch(model.net, dm.train_dataloader(), model.loss_weights, lr))
    p, f = statistics.median(plain), statistics.median(fitted)
    print(f"plain PyTorch loop : {p:7.0f} samples/s  (rounds: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"mhtrain fit()      : {f:7.0f} samples/s  (rounds: {', '.join(f'{v:.0f}' for v in fitted)})")
    print(f"ratio fit/plain    : {f / p:7.3f}   (target >= 0.95)")
    print(f"first fit(): call -> first training step {first_overhead:.3f} s (warm-up; data already cached)")
    print(f"later fit(): call -> first training step {statistics.median(overhead):.3f} s "
          f"median (target < 0.5 s)")
    if args.loggers:
        logger_costs(common, [n for n in args.loggers.split(",") if n], args.rounds)


def logger_costs(common: list[str], loggers: list[str], rounds: int) -> None:
    """Seconds of a whole fit() with each logger against csv (alternating rounds, medians)."""
    mlflow = [] if os.environ.get("MLFLOW_TRACKING_URI") else [
        "logger.mlflow.tracking_uri=sqlite:///runs/bench/mlflow.db"]
    cfgs = {name: compose("multihead_cnn_mnist", [
        *common, f"logger={name}", f"paths.output_dir={OUT}/{name}",
        *(mlflow + ["logger.mlflow.experiment_name=bench_throughput"] if name == "mlflow" else [])])
        for name in ["csv", *loggers]}
    seconds: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(rounds + 1):  # round 0 warms up (MLflow creates its store)
        for name, c in cfgs.items():
            start = time.perf_counter()
            fit(c)
            if r:
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["csv"])
    print(f"fit() with logger=csv: {base:.2f} s median (rounds: "
          f"{', '.join(f'{v:.2f}' for v in seconds['csv'])})")
    for name in loggers:
        t = statistics.median(seconds[name])
        print(f"ratio fit(logger={name})/fit(logger=csv): {t / base:6.3f}  ({t:.2f} s median; rounds: "
              f"{', '.join(f'{v:.2f}' for v in seconds[name])}; target <= 1.03)")


if __name__ == "__main__":
    main()
