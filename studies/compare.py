"""Compare studies ("arms") against a reference: re-train each arm's best configuration for K seeds,
test it once on the test split, and write runs/reports/<name>/report.{md,html}: the plain mean test
accuracy of every head with its 95% t CI, each arm minus the reference seed by seed (the paired
t-test, which decides, and Welch's beside it; unadjusted 95% CIs, Holm-adjusted p over the family;
the arms' correlation from 3 seeds on), the difference the design detects at 80% power, where the
uncertainty comes from (training seed, test images; the search too with --study-seeds), each
arm's search space, the analyses recorded on the studies before, one sentence per arm, and
figures. Re-runs are stored in the studies, so running it again re-trains nothing.

  studies/compare.py --arms loss_weights equal_lr uncertainty_lr baseline_lr --reference baseline_lr
  studies/compare.py --multitask lr --baseline baseline_lr      (two arms, the original form)

Every analysis is recorded on its studies (attribute `analyses`: seeds, arms, test, family, p).
One run is one family (--family NAME, default the report name), all its contrasts adjusted
together. The same runs tested again in another family are refused unless labelled a follow-up
(--follow-up FAMILY); more seeds on contrasts analysed before (--seeds 10 after --seeds 5) are
refused unless declared a later look (--extend), which is judged by an anytime-valid t-test
(--sequential judges a first look that way too); fresh seeds (--first-seed after the last ones)
are a new family.

  studies/compare.py --arms equal_lr --reference baseline_lr --study-seeds 3 --n-trials 8 \
      --search trainer.max_epochs=3 --search data.train_subset=10000 \
      trainer.max_epochs=3 data.train_subset=10000
      (two arms searching the same lr range, each search repeated with study seeds +1, +2, each answer
      re-trained on 5 seeds of its own: the verdict's unit is one search; --search and --n-trials must
      be the arms' own; 16 min on a 2-core CPU, the arms' own 8-trial searches included)

Swept: where do the extra heads help? With --over KEY=V1,V2,... (one config key), at each value
every arm's study config is searched on its own (study <arm>@<key>:<value> in the same storage,
--n-trials each, default 12, with the config's pruner and the same --search overrides for every arm,
default trainer.max_epochs=3), then its best configuration is re-trained for the seeds with the
value applied (and the trailing overrides) and tested once on the full test split. The report
plots test accuracy against the value, one line per arm with 95% CIs, and tabulates each
difference from the reference (paired and Welch) with Holm-adjusted p over all comparisons of the
sweep.
Run again, it trains nothing; interrupted, it resumes. For data.train_subset, null means the whole
training set.

  studies/compare.py --arms loss_weights equal_lr baseline_lr --reference baseline_lr \\
      --over data.train_subset=500,2000,10000,null --seeds 5
      (3 arms x 4 sizes, 12 trials each, 3-epoch searches and re-runs, `make data-efficiency`:
      2 h 10 min on a 2-core CPU shared with other work)

Bad input (a missing study, an --over key the config lacks, a value the config checks refuse, a
training subset larger than the training set) exits 2 with one line before anything is trained."""

import argparse
import signal
import sys
import time
from functools import partial
from pathlib import Path

import optuna
from hydra.utils import instantiate

from mhtrain import ConfigError, one_line_errors
from mhtrain.evaluate import document, report, reruns, searches, sweep, sweep_report
from mhtrain.evaluate.stats import Contrast, contrasts
from mhtrain.study import analyses
from mhtrain.study.storage import DEFAULT_STORAGE

REPORTS = Path("runs/reports")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studies/compare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    arms = p.add_mutually_exclusive_group()
    arms.add_argument("--arms", nargs="+", metavar="STUDY",
                      help="studies to compare (with --over: study configs); the reference is "
                           "added if missing")
    arms.add_argument("--multitask", help="one study to compare with --baseline (default lr)")
    p.add_argument("--reference", "--baseline", dest="reference", default="baseline_lr",
                   help="the study every arm is compared with (default baseline_lr)")
    p.add_argument("--pair", action="append", default=[], metavar="ARM:OTHER",
                   help="also compare ARM with OTHER (paired, in the same Holm family), repeatable, "
                        "e.g. --pair loss_weights:equal_lr")
    p.add_argument("--family", help="the question's name in the studies' ledger of analyses: every "
                                    "contrast of this run is adjusted together, as one family "
                                    "(default: the report name)")
    p.add_argument("--follow-up", metavar="FAMILY",
                   help="label this analysis a follow-up of an earlier family (designed after seeing it); "
                        "needed to test runs that family already tested")
    p.add_argument("--extend", action="store_true",
                   help="declare a later look: more seeds on contrasts analysed before, judged by the "
                        "anytime-valid test (never as a first look); refused without this flag")
    p.add_argument("--sequential", action="store_true",
                   help="judge a first look by the anytime-valid test too, so that later --extend looks "
                        "keep the error over all looks at 5%% (wider intervals now)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    p.add_argument("--seeds", type=int, default=5, help="re-runs per arm (default 5)")
    p.add_argument("--first-seed", type=int, default=1000, help="seeds are first-seed … +K-1")
    p.add_argument("--study-seeds", type=int, default=1, metavar="N",
                   help="repeat each arm's search with N study seeds (<arm>@study_seed:<j>, the same config, "
                        "budget and fidelity), each answer re-trained on --seeds seeds of its own: the "
                        "verdict's interval then covers the search too (default 1: the arms' own searches)")
    p.add_argument("--name", help="report name (default <arms>_vs_<reference>[_over_<key>])")
    p.add_argument("--over", metavar="KEY=V1,V2,...",
                   help="sweep: compare at each value of one config key, "
                        "e.g. data.train_subset=500,2000,null")
    p.add_argument("--n-trials", type=int, help=f"with --over: trials per study (default {sweep.N_TRIALS}); "
                                                "with --study-seeds: the budget each arm's search had")
    p.add_argument("--per-parameter", action="store_true",
                   help="with --over: --n-trials per searched parameter, so an arm searching 3 keys "
                        "gets 3x the trials of one searching 1 (an equal budget per parameter)")
    p.add_argument("--search", action="append", metavar="KEY=VALUE",
                   help="with --over: one override of every arm's search, repeatable, e.g. "
                        "--search trainer.max_epochs=3 --search data.batch_size=128 "
                        f"(default {' '.join(sweep.SEARCH)}); with --study-seeds: the overrides each "
                        "arm's search was run with (checked against what it recorded)")
    p.add_argument("--single-file", action="store_true",
                   help="embed plotly.js in report.html (4.8 MB) instead of sharing one file beside it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides for every re-run, e.g. trainer.max_epochs=10 data.train_subset=null")
    return p


def arm_names(args: argparse.Namespace) -> list[str]:
    names = list(args.arms or [args.multitask or "lr"])
    if args.reference not in names:
        names.append(args.reference)
    if args.seeds < 2:
        raise ConfigError(f"--seeds {args.seeds}: need at least 2 for a confidence interval")
    if len(set(names)) != len(names):
        raise ConfigError(f"--arms {' '.join(names)}: an arm is named twice")
    if len(names) < 2:
        raise ConfigError(f"--arms {' '.join(names)}: name at least one arm besides the reference")
    for pair in args.pair:
        arm, _, other = pair.partition(":")
        if not {arm, other} <= set(names) or arm == other:
            raise ConfigError(f"--pair {pair}: name two different arms of --arms as ARM:OTHER, "
                              f"e.g. --pair {names[0]}:{names[-1]}")
    if args.study_seeds < 1:
        raise ConfigError(f"--study-seeds {args.study_seeds}: must be >= 1")
    if args.over is not None and args.study_seeds != 1:
        raise ConfigError("--study-seeds applies to a comparison without --over; leave one of them out")
    if args.over is None and args.per_parameter:
        raise ConfigError("--per-parameter applies to a sweep only; add --over KEY=V1,V2,...")
    if args.over is None and args.study_seeds == 1 and (args.n_trials is not None or args.search is not None):
        raise ConfigError("--n-trials and --search set the searches of a sweep (--over) or of repeated "
                          "searches (--study-seeds N); add one of them")
    return names


def pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [tuple(p.split(":", 1)) for p in args.pair]


def tested(names: list[str], reference: str, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (arm, reference) pair the analysis tests, in the order of its contrasts."""
    return [(n, reference) for n in names if n != reference] + list(extra)


def recorded(look: analyses.Look, metric: str, studies: list[str], units: list[analyses.Unit],
             fidelity: list[str], tests: list[tuple[str, str, Contrast]]) -> analyses.Analysis:
    """The ledger record of this analysis: each contrast by its two studies, with the p-values of
    the test that decided."""
    return analyses.entry(look, "compare", analyses.test_of(look), metric, studies, units, fidelity,
                          [(a, b, c.deciding.p, c.deciding.p_holm) for a, b, c in tests])


def show(metric: str, study: str, seed: int, value: float, trained: bool, seconds: float) -> None:
    """A progress line per re-run, saying whether it was trained now or found stored."""
    how = f"trained, {seconds:.1f} s" if trained else "stored"
    print(f"  {study} seed {seed}: {metric} = {value:.4f} ({how})", flush=True)


def test_images(ostudy: optuna.Study, overrides: list[str] | tuple[str, ...]) -> int:
    """The size of the test split the re-runs were tested on, read from the data (not assumed),
    for the binomial error of an accuracy measured on it."""
    return len(instantiate(reruns.rerun_config(ostudy, 0, overrides).data).load("test")[0])


def compare(args: argparse.Namespace) -> int:
    names = arm_names(args)
    studies = reruns.open_arms(args.storage, names)  # all refusals come before any training
    metric = reruns.test_metric(studies[0])
    n, per = args.study_seeds, args.seeds
    units = [(j, s) for j in range(n) for s in searches.seeds_of(args.first_seed, per, j)]
    default = "_".join(n for n in names if n != args.reference) + f"_vs_{args.reference}"
    look = analyses.plan(studies, args.family or args.name or default,
                         tested(names, args.reference, pairs(args)), units, args.overrides, args.extend,
                         args.follow_up, args.sequential)
    found = searches.run(studies, n, args.storage, args.first_seed, per, args.overrides,
                         partial(show, metric), args.n_trials, args.search or ())
    arms = found.arms[0] if n == 1 else [searches.pooled(found, name) for name in names]
    reference = arms[names.index(args.reference)]
    cs = contrasts(arms, reference, metric, pairs(args), look.sequential, "seed" if n == 1 else "search")
    comparison = report.Comparison(arms, reference, metric, cs, list(args.overrides),
                                   test_images(studies[0], args.overrides), look, found)
    md, html = report.write(REPORTS / (args.name or default), comparison,
                            report.title_of(names, args.reference), args.single_file)
    if look.repeat is None:
        analyses.record([a.study for row in found.arms for a in row],
                        recorded(look, metric, names, units, list(args.overrides),
                                 [(c.arm, c.reference, c) for c in cs]))
    print("\n" + "\n".join(comparison.sentences()) + f"\nreport: {md}\n        {html}")
    return 0


def swept(args: argparse.Namespace) -> int:
    names = arm_names(args)
    over = sweep.parse_over(args.over)
    search = (tuple(o for o in sweep.SEARCH if sweep.key_of(o) != sweep.key_of(over.key))
              if args.search is None else tuple(args.search))  # sweeping epochs drops the default
    n_trials = sweep.N_TRIALS if args.n_trials is None else args.n_trials
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    plan = sweep.plan(over, names, search, args.overrides, seeds, n_trials, args.storage, args.per_parameter)
    trials = {c.arm: c.study.n_trials for c in plan.cells}
    budget = (f"{n_trials} trials per searched parameter ({', '.join(f'{a} {n}' for a, n in trials.items())})"
              if args.per_parameter else f"{n_trials} trials")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study, not Optuna's own
    print(f"sweep of {over.key} over {', '.join(over.values)}: {len(names)} arms, "
          f"{len(plan.cells)} studies of {budget} ({' '.join(search)}), "
          f"{len(plan.cells) * len(seeds)} re-runs", flush=True)
    default = "_".join(n for n in names if n != args.reference) + f"_vs_{args.reference}_over_{over.short}"
    study_of = {(c.point.value, c.arm): c.study.name for c in plan.cells}
    units = [(0, s) for s in seeds]
    look = analyses.plan(reruns.existing(args.storage, list(study_of.values())),
                         args.family or args.name or default,
                         [(study_of[(p.value, a)], study_of[(p.value, b)]) for p in plan.points
                          for a, b in tested(names, args.reference, pairs(args))],
                         units, args.overrides, args.extend, args.follow_up, args.sequential)
    start = time.monotonic()
    arms, tally = sweep.run(plan, args.storage, progress=sys.stderr.isatty(),
                            on_done=partial(show, plan.metric))
    result = sweep_report.analyse(over, plan.points, arms, args.reference, plan.metric,
                                  test_images(arms[0][0].study, plan.cells[0].rerun), pairs(args), look)
    setup = sweep_report.describe(result, budget, search, args.overrides, plan.full)
    md, html = sweep_report.write(REPORTS / (args.name or default), result, setup,
                                  f"{report.title_of(names, args.reference)}, over {over.key}",
                                  args.single_file)
    if look.repeat is None:
        tests = [(study_of[(p.value, c.arm)], study_of[(p.value, c.reference)], c)
                 for p, cs in zip(plan.points, result.contrasts, strict=True) for c in cs]
        analyses.record([a.study for point in arms for a in point],
                        recorded(look, plan.metric, list(study_of.values()), units, args.overrides, tests))
    print("\n" + document.to_text(sweep_report.table(result)))
    print("\n" + "\n".join(sweep_report.sentence(result, i) for i in range(len(plan.points))))
    print(f"\nsearch: {tally.searched} trials run now, {tally.stored_trials} stored; re-runs: "
          f"{tally.trained} trained now ({tally.seconds:.0f} s of training), {tally.stored} stored; "
          f"wall {time.monotonic() - start:.0f} s\nreport: {md}\n        {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    def work() -> int:
        try:
            return swept(args) if args.over is not None else compare(args)
        except SystemExit:  # Lightning ends a Ctrl-C inside a fit with exit(1)
            if interrupted:
                raise KeyboardInterrupt from None
            raise

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return one_line_errors(work)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
