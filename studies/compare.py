"""Compare studies ("arms") against a reference: re-train each arm's best configuration for K seeds,
test it once on the test split, and write runs/reports/<name>/report.{md,html}: mean test accuracy
of every head with its 95% CI, each arm minus the reference (95% CI, Welch p, Holm-adjusted p), one
sentence per arm, and figures. Re-runs are stored in the studies, so running it again re-trains
nothing.

  studies/compare.py --arms loss_weights equal_lr uncertainty_lr baseline_lr --reference baseline_lr
  studies/compare.py --multitask lr --baseline baseline_lr      (two arms, the original form)"""

import argparse
import sys
from pathlib import Path

from mhtrain import ConfigError
from mhtrain.study import compare, report
from mhtrain.study.storage import DEFAULT_STORAGE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studies/compare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    arms = p.add_mutually_exclusive_group()
    arms.add_argument("--arms", nargs="+", metavar="STUDY",
                      help="studies to compare (the reference is added if missing)")
    arms.add_argument("--multitask", help="one study to compare with --baseline (default lr)")
    p.add_argument("--reference", "--baseline", dest="reference", default="baseline_lr",
                   help="the study every arm is compared with (default baseline_lr)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    p.add_argument("--seeds", type=int, default=5, help="re-runs per arm (default 5)")
    p.add_argument("--first-seed", type=int, default=1000, help="seeds are first-seed … +K-1")
    p.add_argument("--name", help="report name (default <arms>_vs_<reference>)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides for every re-run, e.g. trainer.max_epochs=10 data.train_subset=null")
    return p


def main() -> int:
    args = parser().parse_args()
    names = list(args.arms or [args.multitask or "lr"])
    if args.reference not in names:
        names.append(args.reference)
    try:
        if args.seeds < 2:
            raise ConfigError(f"--seeds {args.seeds}: need at least 2 for a confidence interval")
        if len(set(names)) != len(names):
            raise ConfigError(f"--arms {' '.join(names)}: an arm is named twice")
        if len(names) < 2:
            raise ConfigError(f"--arms {' '.join(names)}: name at least one arm besides the reference")
        studies = compare.open_arms(args.storage, names)  # all refusals come before any training
        metric = compare.test_metric(studies[0])
        seeds = range(args.first_seed, args.first_seed + args.seeds)

        def show(study: str, seed: int, value: float, trained: bool) -> None:
            print(f"{study} seed {seed}: {metric} = {value:.4f} ({'trained' if trained else 'stored'})",
                  flush=True)

        arms = [compare.rerun_best(s, seeds, args.overrides, on_done=show) for s in studies]
        reference = arms[names.index(args.reference)]
        comparison = report.Comparison(arms, reference, metric, compare.contrasts(arms, reference, metric),
                                       list(args.overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    default = "_".join(n for n in names if n != args.reference) + f"_vs_{args.reference}"
    out = Path("runs/reports") / (args.name or default)
    md, html = report.write(out, comparison, report.title_of(names, args.reference))
    print("\n" + "\n".join(comparison.sentences()) + f"\nreport: {md}\n        {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
