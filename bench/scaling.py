"""Parallel workers on one machine: 1 worker with all cores versus K workers sharing them.

The same fixed set of trials (enqueued learning rates, no pruner, default 8 trials x 2 epochs on
5,000 training images) runs in a fresh SQLite storage each way. Prints trials per hour and the ratio.

    python bench/scaling.py [--n-trials 8] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from mhtrain.study import opening, runner, study_config


def run_once(workers: int, args: argparse.Namespace, tmp: str) -> float:
    study = study_config.load("lr", name=f"scaling_{workers}", n_trials=args.n_trials, pruner="none",
                       extra_overrides=[f"trainer.max_epochs={args.epochs}",
                                        f"data.train_subset={args.train_subset}",
                                        "data.val_subset=2000", "callbacks.early_stopping=null"])
    url = f"sqlite:///{tmp}/w{workers}.db"
    ostudy = opening.open_study(study, url)
    for i in range(args.n_trials):
        ostudy.enqueue_trial({"model.optimizer.lr": 10 ** (-3.5 + 2 * i / max(1, args.n_trials - 1))})
    start = time.perf_counter()
    runner.run(study, url, progress=False, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, torch {torch.__version__}; {args.n_trials} enqueued trials x "
          f"{args.epochs} epochs, train_subset={args.train_subset}, val_subset=2000")
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(cores)
        one = run_once(1, args, tmp)
        many = run_once(args.workers, args, tmp)
    per_hour = lambda s: 3600 * args.n_trials / s  # noqa: E731
    print(f"1 worker x {cores} threads : {one:7.1f} s  {per_hour(one):7.0f} trials/h")
    print(f"{args.workers} workers x {max(1, cores // args.workers)} thread(s): {many:7.1f} s  "
          f"{per_hour(many):7.0f} trials/h")
    print(f"ratio ({args.workers} workers / 1 worker): {one / many:.2f}")


if __name__ == "__main__":
    main()
