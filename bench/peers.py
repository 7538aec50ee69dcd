"""mhtrain side by side with what a researcher would use instead, on one machine in one run: the
same search in mhtrain (`studies/<study>.py`, as `make study-lr` runs it), in Optuna's own
Lightning example (`study.optimize` + optuna-integration's `PyTorchLightningPruningCallback`), in
Ray Tune (`Tuner` + `OptunaSearch` + `ASHAScheduler`, reporting through its Lightning callback) and
in the seed repository's Hydra Optuna sweeper (its `hparams_search=mnist_optuna`, its own train.py
and SimpleCNN); then mhtrain's population-based training against Ray's `PopulationBasedTraining`.

The searches: `lr` (20 trials) and `loss_weights` (10 trials), 3 epochs on 10,000 training images,
TPE with seed 0, the search space of conf/study/<study>.yaml; successive halving at reduction
factor 4 from 1 epoch (mhtrain's `sha`, Optuna's SuccessiveHalvingPruner, Ray's ASHA; the seed's
sweeper has no pruner). Optuna's example and Ray train mhtrain's own model and datamodule (built
by `mhtrain.config.compose` + instantiate), so the difference is the harness. Every Trainer gets
one extra callback (bench/peers_clock.py) that records batch seconds and val/digit_acc. Each tool
keeps its own defaults, which differ on purpose: the Optuna callback reports epoch 0 first, so its
first rung judges a trial after 2 epochs, not 1; Ray runs as many trials at once as it has CPUs
(1 CPU, 1 torch thread each); the seed sweeper prunes nothing, runs every trial with seed 12345 and
its own train/val split; mhtrain's TPE (multivariate) starts from n/3 random trials (6 of 20, 3 of 10),
the others' from 10. The seed's
multihead experiment monitors a metric its module never logs, so its callbacks are pointed at
`val/acc_best` (SEED_FIXES below); nothing else of it is changed.

Per tool, the median of --reps runs: wall time (launch to exit: imports, Ray's start-up included),
trials/hour, epochs trained, trials stopped early, time to the first training batch, per-trial
overhead (slot-seconds outside training and validation batches per trial), best val digit
accuracy, time to reach --target, peak memory (PSS summed over the tool's processes); ratios to
mhtrain. PBT (`pbt_loss_weights`, K=4, interval 1, quantile 0.25, the same mutations): wall, the
cost of one exploit (mhtrain's row copy; Ray's checkpoint save + restore), the best member.

Each peer runs in its own virtual environment (bench/peers_setup.py: `--setup` installs them from
pinned versions under $MHTRAIN_PEERS_DIR, default ~/.cache/mhtrain-peers; the seed repository is a
git clone there or at $MHTRAIN_PEERS_SEED_REPO). A peer that is missing is skipped with one line.

    python bench/peers.py --setup                 # install the peers' environments (once)
    python bench/peers.py                         # the full comparison (hours on 2 cores)
    python bench/peers.py --quick                 # 2 trials x 1 epoch, 2,000 images, 1 repetition
    python bench/peers.py --tools mhtrain,optuna --studies lr --no-pbt --reps 1
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import peers_setup as env
from peers_clock import ENV as CLOCK_ENV
from peers_common import ROOT, RunSpec, search_space, study_config
from peers_launch import Launch, launch, read_clock, row

BENCH = Path(__file__).resolve().parent
TOOLS = ("mhtrain", "optuna", "ray", "seed")
SEARCHES = {"lr": 20, "loss_weights": 10}
MNIST_IMAGES = 70_000  # the seed splits train + test itself
# its multihead experiment monitors val/avg_acc, which its module never logs (Lightning stops the first
# epoch): its callbacks watch what its defaults watch
SEED_FIXES = ("callbacks.early_stopping.monitor=val/acc_best",
              "callbacks.model_checkpoint.monitor=val/acc_best")


def data_dir() -> str:
    return os.environ.get("MHTRAIN_DATA_DIR", str(ROOT / "data"))


def argv_for(tool: str, spec: RunSpec, work: Path, clock: Path) -> list[str]:
    """The command that runs `spec`'s search in `tool`, as that tool is normally run."""
    clocked = "+callbacks.peers_clock._target_=peers_clock.BatchClock"
    if tool == "mhtrain":
        return [sys.executable, str(ROOT / "studies" / f"{spec.study}.py"), "--n-trials", str(spec.n_trials),
                "--storage", f"sqlite:///{work}/optuna.db", "--workers", "1", "--no-progress",
                "--seed", str(spec.seed), *spec.fidelity(), *spec.extra.get("overrides", []), clocked]
    if tool in ("optuna", "ray"):
        return [str(env.python(tool)), str(BENCH / f"peers_{tool}.py"), spec.to_json()]
    params = [f"{k}=" + (f"tag(log, interval({p['low']}, {p['high']}))" if p["log"] else
                         f"interval({p['low']}, {p['high']})") for k, p in search_space(spec.study).items()]
    train, val = spec.train_images or 55_000, spec.val_images or 5_000
    return [str(env.python("seed")), str(env.seed_repo() / "src" / "train.py"), "-m",
            "hparams_search=mnist_optuna", "experiment=multihead_cnn_mnist", "hydra.sweeper.params=null",
            f"hydra.sweeper.n_trials={spec.n_trials}", f"hydra.sweeper.sampler.seed={spec.seed}", *params,
            *(study_config(spec.study).get("overrides") or []), f"trainer.max_epochs={spec.epochs}",
            f"data.train_val_test_split=[{train},{val},{MNIST_IMAGES - train - val}]",
            f"paths.data_dir={data_dir()}", f"paths.log_dir={work}/logs", "test=False", *SEED_FIXES, clocked]


def run_tool(tool: str, spec: RunSpec, out: Path, name: str, timeout: float,
             keep: bool) -> tuple[Launch, list[dict[str, Any]]]:
    """Launch one tool in a fresh folder; return its launch and its clock records."""
    work, clock, log = out / "runs" / name, out / "clocks" / f"{name}.jsonl", out / "logs" / f"{name}.log"
    for folder in (work, clock.parent, log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(**{**spec.__dict__, "clock": str(clock), "workdir": str(work)})
    argv = (argv_for(tool, spec, work, clock) if spec.extra.get("mode") != "pbt" or tool == "ray" else
            [sys.executable, str(BENCH / "peers_pbt.py"), str(clock), "--", "--n-trials", str(spec.n_trials),
             "--storage", f"sqlite:///{work}/optuna.db", "--no-progress", *spec.fidelity(),
             *spec.extra.get("overrides", [])])
    environ = {"PYTHONPATH": str(BENCH), CLOCK_ENV: str(clock), "MHTRAIN_DATA_DIR": data_dir()}
    done = launch(argv, environ, work, log, timeout)
    records = read_clock(clock)
    if tool == "mhtrain" and spec.extra.get("mode") == "pbt" and done.ok:
        import optuna

        study = optuna.load_study(study_name="pbt_loss_weights", storage=f"sqlite:///{work}/optuna.db")
        done.result = {"best": study.best_value}
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return done, records


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "-"
    return "not reached" if math.isinf(value) else f"{value:,.{digits}f}"


COLUMNS = [("wall s", "wall", 1), ("trials/h", "per_hour", 0), ("epochs", "epochs", 0),
           ("stopped", "stopped", 0), ("1st batch s", "first_batch", 1), ("overhead s/trial", "overhead", 2),
           ("best acc", "best", 4),
           ("to target s", "to_target", 1), ("peak MB", "peak_mb", 0)]


def table(rows: dict[str, list[dict[str, float]]]) -> list[str]:
    """One line per tool: each column's median over repetitions, then wall and trials/h against mhtrain."""
    meds = {tool: {key: median([r[key] for r in rs]) for _, key, _ in COLUMNS}
            for tool, rs in rows.items() if rs}
    base = meds.get("mhtrain")
    head = ["tool"] + [c for c, _, _ in COLUMNS] + ["x wall", "x trials/h"]

    def ratios(m: dict[str, float]) -> list[str]:
        if not base:
            return ["-", "-"]
        return [fmt(m["wall"] / base["wall"], 2), fmt(m["per_hour"] / base["per_hour"], 2)]

    lines = [[tool] + [fmt(m[key], d) for _, key, d in COLUMNS] + ratios(m) for tool, m in meds.items()]
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [head, *lines]]


def pbt_row(tool: str, done: Launch, records: list[dict[str, Any]]) -> str:
    """Wall, exploits and their cost, the best member: Ray's exploit is its checkpoint save (every
    report) plus a restore (the restarted trial's entry to its first batch, against a fresh start's)."""
    best = done.result.get("best") if tool == "mhtrain" else max(
        (r["acc"] for r in records if r.get("event") == "val" and r.get("acc") is not None), default=math.nan)
    if tool == "mhtrain":
        copies = [r["seconds"] for r in records if r.get("event") == "exploit"]
        cost = f"{len(copies)} exploits, {fmt(median(copies) * 1e3, 2)} ms each (row copy, lineage stored)"
    else:
        fits: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            fits.setdefault(r["fit"], []).append(r)
        starts: dict[str, list[float]] = {"exploit": [], "resume": [], "fresh": []}
        trips = []  # a report (with its checkpoint) until training goes on, in one fit
        for rs in fits.values():
            t = {r["event"]: r for r in rs}
            if "enter" in t and "first_batch" in t:
                kind = "fresh" if "restore" not in t else "resume" if t["restore"].get("own") else "exploit"
                starts[kind].append(t["first_batch"]["t"] - t["enter"]["t"])
            reports = [r["t"] for r in rs if r["event"] == "report"]
            goes_on = [r["t"] for r in rs if r["event"] == "epoch_start"]
            trips += [b - a for a, b in zip(reports, goes_on, strict=False)]
        save = median([r["seconds"] for r in records if r.get("event") == "save"])
        restore = median(starts["exploit"])
        cost = (f"{len(starts['exploit'])} exploits, {fmt(save + restore, 2)} s each = checkpoint save "
                f"{fmt(save, 2)} s + restore {fmt(restore, 2)} s (trial start to first batch; a fresh start "
                f"{fmt(median(starts['fresh']), 2)} s); {len(starts['resume'])} pauses resumed, "
                f"{fmt(median(starts['resume']), 2)} s each; every report "
                f"{fmt(median(trips), 2)} s until training goes on, every member every epoch")
    return (f"{tool:8} wall {fmt(done.wall)} s, peak {fmt(done.peak_mb, 0)} MB, {cost}; best member "
            f"val/digit_acc {fmt(float(best if best is not None else math.nan), 4)}")


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = (f"\nwarning: load average {load:.1f} on {cores} cores: other work shares the CPUs, and a "
            "tool training with several torch threads (mhtrain, Optuna's example, the seed) is slowed "
            "far more than one training with one thread per trial (Ray)") if load > cores / 2 else ""
    return (f"machine: {cpu}, {cores} cores, torch {torch.__version__}, cpu capability "
            f"{torch.backends.cpu.get_cpu_capability()}, load average {load:.1f} at start, "
            f"{datetime.date.today()}{busy}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {', '.join(TOOLS)}")
    ap.add_argument("--studies", default=",".join(SEARCHES), help="comma-separated: lr, loss_weights")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool (the median is printed)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-trials", type=int, help="trials per search (default: lr 20, loss_weights 10)")
    ap.add_argument("--train-images", type=int, default=10_000, help="0: all")
    ap.add_argument("--val-images", type=int, default=0, help="0: the whole validation split (5,000)")
    ap.add_argument("--target", type=float, default=0.98, help="val/digit_acc whose first time is reported")
    ap.add_argument("--pbt-epochs", type=int, help="epochs of the PBT comparison (default --epochs)")
    ap.add_argument("--no-pbt", action="store_true", help="skip the PBT comparison")
    ap.add_argument("--pbt-only", action="store_true", help="only the PBT comparison")
    ap.add_argument("--ray-cpus-per-trial", type=int, default=1,
                    help="Ray's default, 1: as many trials at once as cores")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override for mhtrain, optuna and ray (tests' tiny data)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds one tool run may take")
    ap.add_argument("--out", help="folder for logs and clock files (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep each run's working folder")
    ap.add_argument("--quick", action="store_true", help="2 trials x 1 epoch (PBT: 2), 2,000 images, 1 rep")
    ap.add_argument("--tiny", action="store_true", help="--quick on all the data there is (tests)")
    ap.add_argument("--setup", nargs="*", metavar="TOOL", help="install the peers' environments and exit")
    args = ap.parse_args(argv)
    if args.quick or args.tiny:
        args.reps, args.epochs, args.n_trials, args.target = 1, 1, args.n_trials or 2, min(args.target, 0.9)
        args.pbt_epochs = args.pbt_epochs or 2
        args.train_images, args.val_images = (0, 0) if args.tiny else (2_000, 2_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tools = [t for t in args.tools.split(",") if t]
    if args.setup is not None:
        env.setup([t for t in (args.setup or TOOLS) if t in TOOLS])
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="mhtrain-peers-"))
    print(machine())
    runnable = []
    for tool in tools:
        if why := env.missing(tool):
            print(f"{tool}: skipped, {why}")
        else:
            runnable.append(tool)
            print(f"{tool}: {env.versions(tool)}")
    if not runnable:
        return 0
    slots = {t: 1 for t in runnable} | {"ray": max(1, (os.cpu_count() or 1) // args.ray_cpus_per_trial)}
    extra = {"overrides": args.override, "cpus_per_trial": args.ray_cpus_per_trial}
    print(f"logs and clock files: {out}", flush=True)
    for study in [] if args.pbt_only else [s for s in args.studies.split(",") if s]:
        spec = RunSpec(study, args.n_trials or SEARCHES[study], args.epochs, args.train_images or None,
                       args.val_images or None, extra=extra)
        ray = f"; Ray runs {slots['ray']} trials at once" if "ray" in runnable else ""
        print(f"\n{study}: {spec.n_trials} trials x {spec.epochs} epochs, {spec.train_images or 'all'} "
              f"training / {spec.val_images or 'all'} validation images, TPE seed {spec.seed}; median of "
              f"{args.reps}; target val/digit_acc >= {args.target}{ray}", flush=True)
        rows: dict[str, list[dict[str, float]]] = {t: [] for t in runnable}
        for rep in range(args.reps):
            for tool in runnable:
                done, records = run_tool(tool, spec, out, f"{study}-{tool}-{rep}", args.timeout, args.keep)
                if not done.ok:
                    print(f"  {tool} failed (see {done.log})", flush=True)
                    continue
                rows[tool].append(row(done, records, args.target, slots[tool], spec.epochs))
                print(f"  rep {rep + 1} {tool}: {done.wall:.1f} s, {rows[tool][-1]['trials']} trials",
                      flush=True)
        print("\n".join(table(rows)), flush=True)
    if args.no_pbt or not {"mhtrain", "ray"} & set(runnable):
        return 0
    epochs = args.pbt_epochs or args.epochs
    pbt = study_config("pbt_loss_weights")["pbt"]
    spec = RunSpec("pbt_loss_weights", 4, epochs, args.train_images or None, args.val_images or None,
                   extra={**extra, "mode": "pbt"})
    print(f"\nPBT (pbt_loss_weights): K=4, {epochs} epochs, interval {pbt['interval']}, quantile "
          f"{pbt['quantile']}, resample {pbt['resample_probability']}, factors {pbt['perturbation_factors']}",
          flush=True)
    for rep in range(args.reps):
        for tool in [t for t in ("mhtrain", "ray") if t in runnable]:
            done, records = run_tool(tool, spec, out, f"pbt-{tool}-{rep}", args.timeout, args.keep)
            print(pbt_row(tool, done, records) if done.ok else f"{tool} failed (see {done.log})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
