"""Per-trial overhead of a study: everything outside training and validation batches (sampler and
storage calls, compose, Trainer construction, data setup, the epoch loop, the runner's loop).

Runs a tiny study through the real runner (SQLite storage, the real objective; the loss-weight
study at a few batches per epoch, no pruning) with a callback that times every batch, and splits
each trial's cycle (one trial's start to the next's) into batches and the rest. The first trial
(reading MNIST into memory) is reported apart. Target: < 0.3 s per trial. `--profile` adds where
the rest goes, from cProfile over a second run. First it times `studies/lr.py --help` in CPU
seconds (target < 1.5 s: the command line reads its arguments before importing torch);
`--help-only` stops there.

    python bench/overhead.py [--n-trials 10] [--epochs 2] [--subset 256] [--profile] [--help-only]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain.study import runner, study_config

FITS: list[dict[str, float]] = []  # one record per fit, in trial order
TARGET_S = 0.3
HELP_TARGET_S = 1.5
LR_STUDY = Path(__file__).resolve().parent.parent / "studies" / "lr.py"


def help_cpu_seconds(repeats: int = 3) -> float:
    """Median CPU seconds (user + system) of `studies/lr.py --help`, CPU not wall: the cores may be
    shared, and what matters is the work the command does before it can answer."""
    seconds = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, str(LR_STUDY), "--help"], check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(seconds)


class BatchClock(Callback):
    """Wall-clock marks of one fit and the seconds spent inside its batches (train and val)."""

    def __init__(self) -> None:
        self.t = {"built": time.time(), "batches": 0.0, "n": 0}
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        # recorded from here: the config check also builds this callback once, and never fits
        FITS.append(self.t)
        self.t["fit_start"] = time.time()

    def _begin(self) -> None:
        self._start = time.time()
        self.t.setdefault("first_batch", self._start)

    def _end(self) -> None:
        self.t["batches"] += time.time() - self._start
        self.t["n"] += 1
        self.t["last_batch"] = time.time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._begin()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self._end()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.t["fit_end"] = time.time()


def run_study(args: argparse.Namespace, folder: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = study_config.load("loss_weights", name=name, n_trials=args.n_trials, pruner="none",
                              extra_overrides=[
        f"data.train_subset={args.subset}", f"data.val_subset={args.subset}",
        f"trainer.max_epochs={args.epochs}",
        f"+callbacks.batch_clock._target_={__name__}.BatchClock"])
    ostudy, _ = runner.run(study, f"sqlite:///{folder}/overhead.db", progress=False)
    return ostudy.get_trials()


def split(trials: list[optuna.trial.FrozenTrial], fits: list[dict]) -> dict[str, list[float]]:
    """Per trial (each but the last, which has no next start): where its cycle went."""
    parts: dict[str, list[float]] = {}
    for t, nxt, f in zip(trials, trials[1:], fits, strict=False):
        start, done = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
        cycle = nxt.datetime_start.timestamp() - start
        for key, value in (
                ("cycle", cycle), ("in batches", f["batches"]),
                ("outside batches", cycle - f["batches"]),
                ("  trial start -> Trainer built (suggest, attrs, compose, data, model)",
                 f["built"] - start),
                ("  Trainer built -> first batch (fit setup)", f["first_batch"] - f["built"]),
                ("  between batches (data gathering, epoch loop, metrics, callbacks)",
                 f["last_batch"] - f["first_batch"] - f["batches"]),
                ("  last batch -> trial told (fit teardown, records, tell)", done - f["last_batch"]),
                ("  trial told -> next trial start (runner loop)", nxt.datetime_start.timestamp() - done)):
            parts.setdefault(key, []).append(value)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--subset", type=int, default=256, help="training and validation images per trial")
    ap.add_argument("--profile", action="store_true", help="also profile a second run with cProfile")
    ap.add_argument("--help-only", action="store_true", help="time `studies/lr.py --help` only")
    args = ap.parse_args()
    help_s = help_cpu_seconds()
    print(f"studies/lr.py --help: {help_s:.2f} s of CPU, median of 3 (target < {HELP_TARGET_S} s: "
          f"{'met' if help_s < HELP_TARGET_S else 'missed'})")
    if args.help_only:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"optuna {optuna.__version__}; loss_weights study, {args.n_trials} trials x {args.epochs} "
          f"epochs of {args.subset} train + {args.subset} val images, SQLite")
    with tempfile.TemporaryDirectory() as tmp:
        trials = run_study(args, tmp, "overhead")
        parts = split(trials, FITS)
        first = {k: v[0] for k, v in parts.items()}
        print(f"first trial (reads MNIST): cycle {first['cycle']:.2f} s, outside batches "
              f"{first['outside batches']:.2f} s")
        print(f"later trials, median of {len(parts['cycle']) - 1} (batches per trial: {FITS[1]['n']}):")
        for key, values in parts.items():
            print(f"  {key:72} {statistics.median(values[1:]):7.3f} s")
        overhead = statistics.median(parts["outside batches"][1:])
        per_epoch = statistics.median(parts["  between batches (data gathering, epoch loop, metrics, "
                                            "callbacks)"][1:]) / args.epochs
        print(f"per-trial overhead {overhead:.3f} s (target < {TARGET_S} s: "
              f"{'met' if overhead < TARGET_S else 'missed'}); of it per epoch {per_epoch:.3f} s")
        if args.profile:
            FITS.clear()
            profile = cProfile.Profile()
            profile.enable()
            run_study(args, tmp, "overhead_profiled")
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(45)
            print(out.getvalue())


if __name__ == "__main__":
    main()
