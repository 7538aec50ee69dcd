"""Compare a multitask study with its single-task baseline: re-train each study's best
configuration for K seeds, evaluate on the test split, and write runs/reports/<name>/report.{md,html}
with a verdict (difference in mean test accuracy, 95% CI, Welch t-test). Re-runs are stored in
the studies, so running it again does not re-train."""

import argparse
import sys
from pathlib import Path

import optuna

from mhtrain import ConfigError
from mhtrain.study import compare, report
from mhtrain.study.storage import DEFAULT_STORAGE, open_storage


def main() -> int:
    p = argparse.ArgumentParser(prog="studies/compare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--multitask", default="lr", help="multitask study name (default lr)")
    p.add_argument("--baseline", default="baseline_lr",
                   help="single-task study name (default baseline_lr)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    p.add_argument("--seeds", type=int, default=5, help="re-runs per study (default 5)")
    p.add_argument("--first-seed", type=int, default=1000, help="seeds are first-seed … +K-1")
    p.add_argument("--name", help="report name (default <multitask>_vs_<baseline>)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides for every re-run, e.g. trainer.max_epochs=10 data.train_subset=null")
    args = p.parse_args()
    try:
        if args.seeds < 2:
            raise ConfigError(f"--seeds {args.seeds}: need at least 2 for a confidence interval")
        storage = open_storage(args.storage)
        studies = []
        for name in (args.multitask, args.baseline):
            try:
                studies.append(optuna.load_study(study_name=name, storage=storage))
            except KeyError:
                raise ConfigError(f"no study {name} in {args.storage}; run it first") from None
        multitask, single = studies
        metric = compare.test_metric(multitask)
        if compare.test_metric(single) != metric:
            raise ConfigError(f"{args.multitask} optimizes {metric}, {args.baseline} "
                              f"{compare.test_metric(single)}: nothing to compare")
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        def show(study: str, seed: int, value: float, trained: bool) -> None:
            how = "trained" if trained else "stored"
            print(f"{study} seed {seed}: {metric} = {value:.4f} ({how})", flush=True)

        values = [compare.rerun_best(s, seeds, args.overrides, on_done=show) for s in studies]
        v = compare.verdict(metric, seeds, *values)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path("runs/reports") / (args.name or f"{args.multitask}_vs_{args.baseline}")
    md, html = report.write(out, multitask, single, v)
    print(f"\n{v.sentence()}\nreport: {md}\n        {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
