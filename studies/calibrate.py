"""Calibrate the comparison harness on real training (`make calibrate`): how often `compare`'s test
declares a difference between a configuration and itself (A/A, at most 5% within its binomial
margin), how often it detects a planted handicap (A/B, default the learning rate x 0.1) against the
power its detectable difference implies, and what a later look costs (--extend-to). Writes
runs/calibrate/<name>/report.{md,html}; runs are stored as they end, so it resumes, and more
--reps continue the same calibration.

  studies/calibrate.py --reps 100 --seeds 5 --extend-to 10 trainer.max_epochs=3 data.train_subset=10000
      (100 x (10 + 10 + 5) = 2,500 runs of the digit-only CNN at the quick fidelity)

Bad input (a number out of range, an override the config refuses, another plan in the same
folder) exits 2 with one line before anything is trained."""

import argparse
import sys
import time

from mhtrain import ConfigError, one_line_errors, quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.evaluate import calibrate, document  # noqa: E402 - after the handler: torch takes seconds
from mhtrain.evaluate.document import Bullets, Para  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studies/calibrate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="cnn_mnist",
                   help="the configuration both arms train (default cnn_mnist)")
    p.add_argument("--reps", type=int, default=100, help="repetitions (default 100)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per arm in each repetition (default 5)")
    p.add_argument("--extend-to", type=int, help="also judge a later look at this many seeds (A/A arms)")
    p.add_argument("--handicap", action="append", metavar="KEY=VALUE",
                   help="the B arm's overrides, repeatable (default: the learning rate x 0.1)")
    p.add_argument("--first-seed", type=int, default=100_000, help="seeds start here (default 100000)")
    p.add_argument("--name", default="calibrate", help="the folder under runs/calibrate (default calibrate)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of both arms (the fidelity)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def work() -> int:
        if not args.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"--name {args.name!r}: use letters, digits, - and _")
        plan = calibrate.make_plan(args.experiment, args.overrides, args.handicap, args.reps, args.seeds,
                                   args.extend_to, args.first_seed)
        metric = calibrate.metric_of(plan)
        store = calibrate.Store.open(calibrate.ROOT / args.name, plan)
        start = time.monotonic()
        spent = calibrate.train(plan, store, metric)
        found = calibrate.analyse(plan, store, metric)
        text = calibrate.lines(plan, found)
        md, _ = document.write(store.out, "Calibration of the comparison harness",
                               [Para(text[0]), Bullets(text[1:])])
        wall = time.monotonic() - start
        print("\n".join(text) + f"\ntrained now: {spent:.0f} s; wall {wall:.0f} s\nreport: {md}")
        return 0

    return one_line_errors(work)


if __name__ == "__main__":
    sys.exit(main())
