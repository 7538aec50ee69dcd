"""What pruning saves: the loss-weights study with the median pruner and with none.

Same sampler seed, same reduced fidelity (default: 16 trials x 4 epochs, 5,000 training and
2,000 validation images), each in a fresh SQLite storage. Prints epochs used, wall time and the
best value side by side. Target: pruned uses <= 45% of the epochs, best within 0.1 pp.

    python bench/pruning.py [--n-trials 16] [--epochs 4] [--train-subset 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from mhtrain.study import runner, space


def run_once(pruner: str, args: argparse.Namespace, tmp: str) -> dict:
    study = space.load("loss_weights", name=f"bench_{pruner}", n_trials=args.n_trials, pruner=pruner,
                       seed=args.seed, extra_overrides=[
                           f"trainer.max_epochs={args.epochs}", f"data.train_subset={args.train_subset}",
                           "data.val_subset=2000", "callbacks.early_stopping=null"])
    start = time.perf_counter()
    ostudy, _ = runner.run(study, f"sqlite:///{tmp}/{pruner}.db", progress=False)
    seconds = time.perf_counter() - start
    trials = ostudy.get_trials()
    return {"epochs": sum(t.user_attrs.get("epochs", 0) for t in trials),
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "seconds": seconds, "best": ostudy.best_value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"loss_weights study, {args.n_trials} trials x {args.epochs} epochs, "
          f"train_subset={args.train_subset}, val_subset=2000, TPE seed {args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: run_once(p, args, tmp) for p in ("none", "median")}
    full = args.n_trials * args.epochs
    print(f"{'pruner':8} {'epochs':>8} {'% of full':>10} {'pruned':>7} {'wall s':>8} {'best':>8}")
    for p, r in results.items():
        print(f"{p:8} {r['epochs']:8d} {100 * r['epochs'] / full:9.0f}% {r['pruned']:7d} "
              f"{r['seconds']:8.0f} {r['best']:8.4f}")
    share = results["median"]["epochs"] / results["none"]["epochs"]
    gap = 100 * (results["none"]["best"] - results["median"]["best"])
    print(f"median/none epochs: {share:.2f} (target <= 0.45); wall: "
          f"{results['median']['seconds'] / results['none']['seconds']:.2f}; "
          f"best gap: {gap:+.2f} pp (target within 0.1 pp)")


if __name__ == "__main__":
    main()
