"""Trials per hour of a population: the same random-search study trained one trial at a time
(solo, K=1: one Lightning Trainer per trial, as `fit` runs it) and K trials at a time as one
stacked model, on the same device in one run. Prints wall time, trials/hour, peak memory, the
best val/digit_acc and the trials/hour ratio against K=1.

The study: lr log-uniform in [1e-4, 1e-2], thickness and smoothness loss weights uniform in
[0, 2] (digit 1.0), drawn from one seeded generator, so every K trains the very same trials;
no pruning; the multihead CNN of `multihead_cnn_mnist` (heads, normalisation and batch size
read from conf/data/multihead_mnist.yaml). Needs torch and Lightning only: it drives the
population engine directly (no Optuna, no Hydra), so it runs on a bare accelerator machine.
Targets on an H100 (issue 8): >= 10x trials/hour at K=32, best within 0.3 pp of K=1's.

    python bench/population.py                                  # 32 trials x 3 epochs, full 55k
    python bench/population.py --trials 4 --epochs 1 --train-subset 2000 --ks 1,2,4   # CPU-sized
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from mhtrain.data.datamodule import MNISTDataModule
from mhtrain.models import MultiheadLitModule, SimpleCNN
from mhtrain.population import Member, best_of, train_population

DATA_CONF = Path(__file__).resolve().parent.parent / "conf" / "data" / "multihead_mnist.yaml"
METRIC = "val/digit_acc"
TRAINER = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def sample_trials(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64).tolist()
    return [{"seed": seed + i, "lr": 10 ** (-4 + 2 * a),
             "loss_weights": {"digit": 1.0, "thickness": 2 * b, "smoothness": 2 * c}}
            for i, (a, b, c) in enumerate(u)]


def datamodule(args: argparse.Namespace, seed: int) -> MNISTDataModule:
    conf = yaml.safe_load(DATA_CONF.read_text())
    return MNISTDataModule(args.data_dir, heads=conf["heads"], batch_size=conf["batch_size"],
                           val_size=conf["val_size"], split_seed=conf["split_seed"],
                           train_subset=args.train_subset, val_subset=args.val_subset,
                           mean=conf["mean"], std=conf["std"], seed=seed)


def build(trial: dict, heads: dict[str, int]) -> MultiheadLitModule:
    """The trial's model with its solo run's initial weights (built under its seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial["seed"])
        return MultiheadLitModule(net=partial(SimpleCNN), heads=heads,
                                  optimizer=partial(torch.optim.Adam, lr=trial["lr"]),
                                  loss_weights=trial["loss_weights"])


class History(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({METRIC: float(trainer.callback_metrics[METRIC])})


def run_solo(trials: list[dict], args: argparse.Namespace) -> list[float]:
    best = []
    for trial in trials:
        dm = datamodule(args, trial["seed"])
        model = build(trial, {n: h.classes for n, h in dm.heads.items()})
        history = History()
        L.Trainer(**TRAINER, max_epochs=args.epochs, callbacks=[history]).fit(model, dm)
        best.append(best_of(history.epochs)[METRIC])
    return best


class RandomSearch:
    """A MemberSource over the sampled trials: each runs all its epochs."""

    def __init__(self, trials: list[dict], heads: dict[str, int], epochs: int) -> None:
        self.todo, self.heads, self.epochs, self.best = list(trials), heads, epochs, []

    def next(self, free: int) -> list[Member]:
        taken, self.todo = self.todo[:free], self.todo[free:]
        return [Member(key=t["seed"], model=build(t, self.heads), seed=t["seed"],
                       max_epochs=self.epochs) for t in taken]

    def report(self, member: Member, epoch: int, metrics: dict[str, float]) -> bool:
        return True

    def finish(self, member: Member, result: dict) -> None:
        self.best.append(result["best"][METRIC])


def run_population(trials: list[dict], k: int, args: argparse.Namespace) -> list[float]:
    dm = datamodule(args, 0)
    source = RandomSearch(trials, {n: h.classes for n, h in dm.heads.items()}, args.epochs)
    train_population(dm, source, k, TRAINER)
    return source.best


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB rss*"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=None, help="default: all 55,000")
    ap.add_argument("--val-subset", type=int, default=None, help="default: all 5,000")
    ap.add_argument("--ks", default="1,8,32", help="population sizes; 1 is the solo baseline")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (the same trials for every K)")
    ap.add_argument("--data-dir", default=os.environ.get("MHTRAIN_DATA_DIR", "data"))
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"cpu, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {args.trials} trials x {args.epochs} epochs, "
          f"train_subset={args.train_subset or 'all'}, val_subset={args.val_subset or 'all'}")
    trials = sample_trials(args.trials, args.seed)
    warm = datamodule(args, 0)  # files read and verified once, before any K is timed
    warm.prepare_data()
    warm.setup("fit")
    rows = []
    for k in ks:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        best = run_solo(trials, args) if k == 1 else run_population(trials, k, args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        rows.append((k, wall, 3600 * len(best) / wall, peak_memory(device), max(best)))
        print(f"  K={k}: {wall:.1f} s", flush=True)
    base = next((r for r in rows if r[0] == 1), rows[0])
    print(f"\n{'K':>8} {'wall s':>8} {'trials/h':>9} {'peak mem':>16} {'best ' + METRIC:>20} {'ratio':>6}")
    for k, wall, per_hour, mem, best in rows:
        label = "1 (solo)" if k == 1 else str(k)
        print(f"{label:>8} {wall:8.1f} {per_hour:9.0f} {mem:>16} {best:20.4f} {per_hour / base[2]:6.2f}")
    if device.type == "cpu":
        print("* CPU peak is the process's peak RSS so far (it cannot be reset between K)")


if __name__ == "__main__":
    main()
