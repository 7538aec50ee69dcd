"""The command line shared by studies/*.py: parse, validate everything, then run and summarize."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mhtrain import ConfigError, one_line_errors, quiet
from mhtrain.study import confirm, records, slurm, study_config
from mhtrain.study.checkpoints import KEEP
from mhtrain.study.pruners import NAMES as PRUNERS
from mhtrain.study.pruners import from_text
from mhtrain.study.storage import DEFAULT_STORAGE, HEARTBEAT_S, URL_FORMS, check_storage
from mhtrain.urls import masked


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing Hydra overrides apply to every trial, e.g.\n"
               "  trainer.max_epochs=4 data.train_subset=20000\n"
               "Re-running the same command resumes the study: --n-trials is its total budget.\n"
               "Bad input exits 2 with one line and writes nothing; Ctrl-C exits 130 and leaves\n"
               "no trial RUNNING.")
    p.add_argument("--n-trials", type=int, help="total trials the study should hold "
                   "(finished ones count; default from conf/study/<name>.yaml)")
    p.add_argument("--study-name", help="name in the storage (default: the study config's name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"{URL_FORMS} (default {DEFAULT_STORAGE})")
    p.add_argument("--experiment", help="experiment to search instead of the study config's; "
                   "the metric becomes that experiment's optimized_metric")
    p.add_argument("--metric", help="val metric to optimize (default: the experiment's)")
    p.add_argument("--sampler", choices=study_config.SAMPLERS, help="default from the study config")
    p.add_argument("--pruner", metavar="NAME[:KEY=V,...]",
                   help=f"{', '.join(PRUNERS)}, arguments after a colon, e.g. sha:report_every=0.25 "
                        "(default from the study config)")
    p.add_argument("--seed", type=int, help="study seed; trial seed = seed + trial number")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no new trial after this many seconds")
    p.add_argument("--workers", default="1", metavar="N|auto",
                   help="worker processes on this machine sharing the study (default 1; auto: one "
                        "per GPU, worker i on GPU i mod G, 1 without a GPU); each gets cores/N "
                        "torch threads; a worker that dies is replaced")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, metavar="SECONDS",
                   help=f"RDB heartbeat: a trial silent for 3x this long is failed and re-run "
                        f"(default {HEARTBEAT_S})")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume a study although its experiment, metric, search space or fixed "
                        "overrides differ from the stored ones (its trials are then ranked together)")
    p.add_argument("--population", metavar="K|auto",
                   help="trials each worker trains at once as one stacked model (default from the "
                        "study config, auto: 32 on a GPU, 1 on the CPU)")
    p.add_argument("--warm-start", metavar="STUDY[:K]",
                   help="enqueue the best K (default 1) trials of another study in the same storage "
                        "first, e.g. --warm-start lr; resuming never enqueues them twice")
    p.add_argument("--keep-checkpoints", choices=KEEP, default="none",
                   help="store trials' best-epoch weights as Optuna artifacts beside the storage: "
                        "all, or best (a trial that beats every one finished before it); default none")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    confirm.add_arguments(p)
    slurm.add_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides for every trial")
    return p


def count_arg(flag: str, text: str | None) -> int | str | None:
    """An `N|auto` option: None (not given), "auto", or an integer >= 1."""
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{flag} {text}: must be auto or an integer >= 1")
    return value


def check_args(args: argparse.Namespace) -> None:
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials {args.n_trials}: must be >= 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout}: must be > 0")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat {args.heartbeat}: must be >= 1")
    if args.study_name is not None and not args.study_name.strip():
        raise ConfigError("--study-name is empty; give a name or leave the option out")
    if args.study_name is not None:
        records.study_name(args.study_name)  # it becomes a folder, a job name, a script line


def main(study_name: str, description: str, argv: Sequence[str] | None = None,
         prog: str | None = None) -> int:
    """Run the study config `conf/study/<study_name>.yaml` as the command line asks. Everything is
    checked before anything is written: arguments, the study config composed with the overrides,
    the data, the storage URL."""
    p = parser(prog or f"studies/{study_name}.py", description)
    args = p.parse_args(slurm.glue(argv))

    def run() -> int:
        # torch and Lightning come in here, once the arguments are read: `--help` stays instant
        from mhtrain.config import prepare_data
        from mhtrain.study import runner
        from mhtrain.study.answer import answer
        from mhtrain.study.summary import summary, val_images
        from mhtrain.study.warmstart import load_source
        from mhtrain.study.workers import auto_workers

        quiet()
        check_args(args)
        confirm.check(args)
        workers = count_arg("--workers", args.workers)
        study = study_config.load(study_name, keep_checkpoints=args.keep_checkpoints, name=args.study_name,
                           n_trials=args.n_trials, experiment=args.experiment, metric=args.metric,
                           sampler=args.sampler, pruner=args.pruner and from_text(args.pruner),
                           seed=args.seed, extra_overrides=args.overrides,
                           population=count_arg("--population", args.population))
        prepare_data(study_config.base_config(study))
        check_storage(args.storage)
        if args.slurm is not None or args.dry_run:
            return slurm.submit(p, args, study_name, study)
        warm = load_source(args.storage, args.warm_start, study.name) if args.warm_start else None
        if workers == "auto":  # one per GPU when the study trains on GPUs
            workers = auto_workers(study_config.base_config(study).trainer.get("accelerator"))
        # how this run trains, said at its start and again under its summary
        how = (f"{study.name}: budget {study.n_trials} trials, {workers} worker(s), population "
               f"{study.population} per worker ({study.population_reason}), storage {masked(args.storage)}")
        if study.pbt is not None:
            how += f", population-based training every {study.pbt.interval} epoch(s)"
        print(how, flush=True)
        ostudy, outcome = runner.run(study, args.storage, timeout=args.timeout, progress=not args.no_progress,
                                     workers=workers, heartbeat=args.heartbeat,
                                     allow_changes=args.allow_changes, warm=warm)
        images = val_images(study_config.base_config(study))
        print(summary(ostudy, study.max_epochs, args.storage, images))
        answer(ostudy, study, args.confirm if not (outcome.interrupted or outcome.timed_out) else 0,
               args.confirm_seeds, args.confirm_delta)
        print(how)
        for line in outcome.deaths:
            print(line)
        if outcome.timed_out:
            print(f"stopped by --timeout {args.timeout:g} s before the budget of {study.n_trials}; "
                  "run the same command to go on")
        if outcome.interrupted:
            print("interrupted: running trials were marked FAIL; run the same command to resume")
            return 130
        return 0

    return one_line_errors(run)
