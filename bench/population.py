"""Trials per hour of a population, and what stacking does to the search: the same random-search
study trained one trial at a time (solo, K=1: one Lightning Trainer per trial, as `fit` runs it,
with the population's cuDNN and memory-format settings) and K trials at a time as one stacked
model, on the same device in one run.

Prints, per K: wall time, trials/hour and its ratio to K=1, peak memory, the best
val/digit_acc; how far each member's best val/digit_acc is from its own solo run's (median,
90th percentile, max of |member - solo|, in points); and whether stacking changes which trials a
pruner would stop: successive halving (min_resource 1, reduction factor 4, the shipped pruner)
and the median rule (5 startup trials), each replayed in trial order on the recorded curves, so
the only difference between K=1 and K is the curves.

The study: lr log-uniform in [1e-4, 1e-2], thickness and smoothness loss weights uniform in
[0, 2] (digit 1.0), drawn from one seeded generator, so every K trains the very same trials;
every trial runs all its epochs; the multihead CNN of `multihead_cnn_mnist` (heads,
normalisation and batch size read from conf/data/multihead_mnist.yaml). Needs torch and
Lightning only: it drives the population engine directly (no Optuna, no Hydra).

    python bench/population.py                       # 32 trials x 3 epochs, full 55k
    python bench/population.py --trials 8 --epochs 3 --train-subset 10000 --ks 1,2,4   # quick
    python bench/population.py --trials 3 --epochs 2 --train-subset 256 --val-subset 256 --ks 1,2
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from mhtrain import quiet
from mhtrain.data.datamodule import MNISTDataModule
from mhtrain.models import MultiheadLitModule, SimpleCNN
from mhtrain.population import Member, train_population
from mhtrain.result import FitResult

DATA_CONF = Path(__file__).resolve().parent.parent / "conf" / "data" / "multihead_mnist.yaml"
METRIC = "val/digit_acc"
# Solo runs train with the population's settings (cuDNN's autotuner on, as the engine sets it; NCHW,
# the only layout `vmap` keeps), so the K ratio is stacking alone; bench/gpu.py shows what `fit`'s
# own settings (channels-last, no autotuner) change, on rows of their own
TRAINER = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
           "benchmark": True}
CHANNELS_LAST = False
SHA_ETA, MEDIAN_STARTUP = 4, 5


def sample_trials(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64).tolist()
    return [{"seed": seed + i, "lr": 10 ** (-4 + 2 * a),
             "loss_weights": {"digit": 1.0, "thickness": 2 * b, "smoothness": 2 * c}}
            for i, (a, b, c) in enumerate(u)]


def datamodule(data_dir: str, train_subset: int | None, val_subset: int | None, seed: int,
               val_size: int | None = None) -> MNISTDataModule:
    conf = yaml.safe_load(DATA_CONF.read_text())
    return MNISTDataModule(data_dir, heads=conf["heads"], batch_size=conf["batch_size"],
                           val_size=val_size or conf["val_size"], split_seed=conf["split_seed"],
                           train_subset=train_subset, val_subset=val_subset,
                           mean=conf["mean"], std=conf["std"], seed=seed, verify=False)


def build(trial: dict, heads: dict[str, int], channels_last: bool = CHANNELS_LAST) -> MultiheadLitModule:
    """The trial's model with its solo run's initial weights and dropout streams (the CPU generator
    seeded as `fit` seeds it; no other RNG stream touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(trial["seed"])
        return MultiheadLitModule(net=partial(SimpleCNN, channels_last=channels_last), heads=heads,
                                  optimizer=partial(torch.optim.Adam, lr=trial["lr"]),
                                  loss_weights=trial["loss_weights"])


def heads_of(dm: MNISTDataModule) -> dict[str, int]:
    return {n: h.classes for n, h in dm.heads.items()}


class Curve(Callback):
    """A solo run's val/digit_acc after each epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics[METRIC]))


def run_solo(trials: list[dict], args: argparse.Namespace) -> dict[int, list[float]]:
    """Each trial trained alone, as `fit` trains it (the population's settings): its val/digit_acc
    per epoch, by seed."""
    curves = {}
    for trial in trials:
        dm = datamodule(args.data_dir, args.train_subset, args.val_subset, trial["seed"], args.val_size)
        curve = Curve()
        L.seed_everything(trial["seed"], verbose=False)
        L.Trainer(**TRAINER, max_epochs=args.epochs, callbacks=[curve]).fit(build(trial, heads_of(dm)), dm)
        curves[trial["seed"]] = curve.values
    return curves


class RandomSearch:
    """A MemberSource over the sampled trials: each runs all its epochs; keeps their curves."""

    def __init__(self, trials: list[dict], heads: dict[str, int], epochs: int) -> None:
        self.todo, self.heads, self.epochs = list(trials), heads, epochs
        self.curves: dict[int, list[float]] = {}

    def next(self, free: int) -> list[Member]:
        taken, self.todo = self.todo[:free], self.todo[free:]
        return [Member(key=t["seed"], model=build(t, self.heads), seed=t["seed"],
                       max_epochs=self.epochs) for t in taken]

    def report(self, member: Member, epoch: int, metrics: dict[str, float]) -> bool:
        return True

    def finish(self, member: Member, result: FitResult) -> None:
        self.curves[member.key] = [e[METRIC] for e in result.history]


def run_population(trials: list[dict], k: int, args: argparse.Namespace) -> dict[int, list[float]]:
    dm = datamodule(args.data_dir, args.train_subset, args.val_subset, 0, args.val_size)
    source = RandomSearch(trials, heads_of(dm), args.epochs)
    train_population(dm, source, k, TRAINER)
    return source.curves


def sha_pruned(curves: list[list[float]], eta: int = SHA_ETA) -> set[int]:
    """Trials (by position) that Optuna's successive halving (min_resource 1, maximize) stops,
    replayed in trial order: at rung r (epoch eta**r) a trial goes on only if its value is in
    the top 1/eta of the values seen at that rung so far (the first ones always go on)."""
    pruned: set[int] = set()
    rungs: dict[int, list[float]] = {}
    for i, curve in enumerate(curves):
        rung = 0
        while eta**rung <= len(curve) and i not in pruned:
            seen = rungs.setdefault(rung, [])
            value = curve[eta**rung - 1]
            seen.append(value)
            keep_top = max(len(seen) // eta, 1)
            if value < sorted(seen)[-keep_top]:
                pruned.add(i)
            rung += 1
    return pruned


def median_pruned(curves: list[list[float]], startup: int = MEDIAN_STARTUP) -> set[int]:
    """Trials that Optuna's median rule stops (after `startup` trials): at each epoch, a value
    below the median of the earlier completed (unpruned) trials' values at that epoch."""
    pruned: set[int] = set()
    for i, curve in enumerate(curves[startup:], start=startup):
        for epoch, value in enumerate(curve):
            earlier = [c[epoch] for j, c in enumerate(curves[:i]) if j not in pruned]
            if earlier and value < statistics.median(earlier):
                pruned.add(i)
                break
    return pruned


def gaps(curves: dict[int, list[float]], solo: dict[int, list[float]]) -> list[float]:
    """|best member value - best solo value| per trial, in points."""
    return sorted(100 * abs(max(curves[s]) - max(solo[s])) for s in solo)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB rss*"


def timed(run, device: torch.device) -> tuple[dict[int, list[float]], float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    curves = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return curves, time.perf_counter() - start


def parser(doc: str | None = __doc__) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=None, help="default: all 55,000")
    ap.add_argument("--val-subset", type=int, default=None, help="default: all 5,000")
    ap.add_argument("--val-size", type=int, default=None,
                    help="images held out for validation (default: the data config's 5,000)")
    ap.add_argument("--ks", default="1,8,32", help="population sizes; 1 is the solo baseline")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (the same trials for every K)")
    ap.add_argument("--data-dir", default=os.environ.get("MHTRAIN_DATA_DIR", "data"))
    return ap


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Train the sampled trials solo and at each K; one row per K (K=1 is solo)."""
    trials = sample_trials(args.trials, args.seed)
    warm = datamodule(args.data_dir, args.train_subset, args.val_subset, 0, args.val_size)
    warm.setup("fit")  # files read once, before any K is timed
    rows, solo = [], None
    for k in sorted(int(k) for k in args.ks.split(",")):
        run = partial(run_solo, trials, args) if k == 1 else partial(run_population, trials, k, args)
        curves, wall = timed(run, device)
        solo = solo or (curves if k == 1 else None)
        ordered = [curves[t["seed"]] for t in trials]
        rows.append({"k": k, "wall": wall, "per_hour": 3600 * len(trials) / wall, "mem": peak_memory(device),
                     "best": max(max(c) for c in ordered), "curves": curves,
                     "sha": sha_pruned(ordered), "median": median_pruned(ordered)})
        print(f"  K={k}: {wall:.1f} s", flush=True)
    for row in rows:
        row["gaps"] = gaps(row["curves"], solo) if solo else None
        base = rows[0]
        row["ratio"] = row["per_hour"] / base["per_hour"]
        row["sha_changed"] = sorted(row["sha"] ^ base["sha"])
        row["median_changed"] = sorted(row["median"] ^ base["median"])
    return rows


def main() -> None:
    args = parser().parse_args()
    quiet()  # one line per fit and a pytree warning otherwise
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"cpu, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {args.trials} trials x {args.epochs} epochs, "
          f"train_subset={args.train_subset or 'all'}, val_subset={args.val_subset or 'all'}")
    rows = measure(args, device)
    print(f"\n{'K':>8} {'wall s':>8} {'trials/h':>9} {'ratio':>6} {'peak mem':>14} {'best':>7} "
          f"{'|member-solo| pp: median p90 max':>34}  pruned by sha / median (changed vs K=1)")
    for r in rows:
        g = r["gaps"]
        gap = (f"{statistics.median(g):.2f} {g[math.ceil(0.9 * len(g)) - 1]:.2f} {g[-1]:.2f}"
               if g and r["k"] > 1 else "-")
        label = "1 (solo)" if r["k"] == 1 else str(r["k"])
        print(f"{label:>8} {r['wall']:8.1f} {r['per_hour']:9.0f} {r['ratio']:6.2f} {r['mem']:>14} "
              f"{r['best']:7.4f} {gap:>34}  {len(r['sha'])} ({r['sha_changed'] or 'none'}) / "
              f"{len(r['median'])} ({r['median_changed'] or 'none'})")
    if device.type == "cpu":
        print("* CPU peak is the process's peak RSS so far (it cannot be reset between K)")


if __name__ == "__main__":
    main()
