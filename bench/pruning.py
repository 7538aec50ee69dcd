"""Pruners on equal terms: the loss-weight study under each pruner, for several sampler seeds.

Per pruner it prints the epochs used (fractions included: the share of batches) against the
unpruned search, the wall time, the best value and the regret against the unpruned search of the
same seed (mean and worst), then names the winner: the lowest share with mean regret <= 0.1 pp.

Every configuration is trained once, not once per pruner: a study replays its trials on learning
curves that are trained on demand, epoch by epoch, each in its own paused training that resumes
where it stopped (its RNG state saved and restored around each pause, so interleaving changes
nothing). Each pruner runs a real Optuna study (the study's sampler, a SQLite storage) whose trials
report these curves, so TPE sees exactly what it would see live, pruned trials included. A
configuration's training seed comes from its parameters, not from the trial number, so the same
proposal gets the same curve under every pruner. Steps count the pruner's `report_every` epochs,
as the study counts them: a sub-epoch pruner also sees each curve's first epoch at its fractions
(read by the module's `evaluate` on the val set, which leaves training as it was). A trial's last
epoch (its max_epochs or an early stop) is never judged, as the objective does. A trial stopped
within an epoch pays for its share of that epoch's batches. Wall time counts the setup, the
batches and the sub-epoch validations each trial used, plus the study's own time.

    python bench/pruning.py [--seeds 0 1 2] [--n-trials 24] [--epochs 10] [--train-subset 1500]
        [--val-subset 2000] [--pruners none sha sha:report_every=0.25 ...] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import optuna
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain.study import records, study_config
from mhtrain.study.pruners import build_pruner, from_text, parse_pruner, sub_epoch_points
from mhtrain.study.samplers import make_sampler
from mhtrain.study.trials import search_base, trial_values, with_values
from mhtrain.train import fit

CANDIDATES = ["none", "median", "sha", "hyperband", "sha:report_every=0.25", "sha:report_every=0.5"]
TARGET_SHARE, TARGET_REGRET_PP = 0.25, 0.1


class Curve(Callback):
    """One configuration's training, advanced on demand one epoch at a time in its own thread;
    its first epoch also records the metric after each 1/`parts` of it (the study's sub-epoch
    reports, read the same way: they leave the training as it was)."""

    def __init__(self, cfg, metric: str, setup_s: float, parts: int) -> None:
        self.cfg, self.metric, self.parts = cfg, metric, parts
        self.values: list[float] = []
        self.probes: dict[float, float] = {}  # fraction of the first epoch -> metric there
        self.probe_s = 0.0  # seconds one sub-epoch report costs (its validation pass)
        self._at: dict[int, float] = {}
        self.seconds: list[float] = []  # per epoch; the first includes composing and building
        self.done, self.error, self._stop = False, None, False
        self._go, self._paused = threading.Semaphore(0), threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._value, self._mark, self._setup_s = float("nan"), 0.0, setup_s

    def epoch(self, e: int) -> tuple[float, bool]:
        """The metric after epoch `e` (1-based) and whether training ends there."""
        while len(self.values) < e and not self.done:
            self._mark = time.perf_counter()
            if self._thread is None:
                self._thread = threading.Thread(target=self._train, daemon=True)
                self._thread.start()
            else:
                self._go.release()
            self._paused.acquire()
            if self.error is not None:
                raise self.error
        return self.values[e - 1], self.done and e == len(self.values)

    def stop(self) -> None:
        if self._thread is not None and not self.done:
            self._stop = True
            self._go.release()
            self._paused.acquire()
        if self._thread is not None:
            self._thread.join()

    def _train(self) -> None:
        try:
            fit(self.cfg, callbacks=[self])
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            self._clock()
            self.done = True
            self._paused.release()

    def _clock(self) -> None:
        if not self._stop:
            setup = self._setup_s if not self.seconds else 0.0
            self.seconds.append(time.perf_counter() - self._mark + setup)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._value = float(trainer.callback_metrics[self.metric])

    def on_train_start(self, trainer, pl_module) -> None:
        self._at = sub_epoch_points(trainer.num_training_batches, 1 / self.parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx + 1 in self._at:
            start = time.perf_counter()
            value = float(pl_module.evaluate(trainer.val_dataloaders)[self.metric])
            self.probes[round(self._at[batch_idx + 1], 6)] = value
            self.probe_s = time.perf_counter() - start
            self._mark += self.probe_s  # an epoch's seconds are training's; a report is charged apart

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._stop:
            self.values.append(self._value)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Paused before an epoch starts, not after one ends: EarlyStopping decides after every
        # other callback's epoch end, so only a next epoch's start says the run goes on.
        if trainer.current_epoch == 0:
            return
        self._clock()
        rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
        self._paused.release()
        self._go.acquire()
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if self._stop:
            trainer.should_stop = True  # the epoch ends before its first batch


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


class Curves:
    """Curves by parameters: the first proposal of a configuration starts it, later ones reuse it."""

    def __init__(self, study: records.StudyConfig, folder: str, parts: int) -> None:
        self.study, self.folder, self.parts = study, folder, parts
        self.runs: dict[tuple, Curve] = {}

    def __call__(self, params: dict) -> Curve:
        key = _key(params)
        if key not in self.runs:
            start = time.perf_counter()
            number = zlib.crc32(repr(key).encode()) % 100_000  # the training seed follows the params
            values = trial_values(self.study, optuna.trial.FixedTrial(params, number))
            base = search_base(self.study.experiment, self.study.overrides)
            cfg = with_values(base, [*values, f"paths.output_dir={self.folder}/{number}"])
            self.runs[key] = Curve(cfg, self.study.metric, time.perf_counter() - start, self.parts)
        return self.runs[key]

    def close(self) -> None:
        for run in self.runs.values():
            run.stop()


def replay(study: records.StudyConfig, spec, seed: int, curves: Curves, max_epochs: int,
           storage: str) -> dict:
    """One study of `study.n_trials` trials under `spec`, its trials reporting recorded curves."""
    ostudy = optuna.create_study(storage=storage, study_name=f"{spec}-{seed}", direction=study.direction,
                                 sampler=make_sampler(study.sampler, study.search_space, study.n_trials,
                                                         study.seed + seed),
                                 pruner=build_pruner(spec, max_epochs))
    trained_before = sum(sum(r.seconds) for r in curves.runs.values())
    used_s = 0.0

    every = spec.report_every
    first = [i * every for i in range(1, round(1 / every))]  # the first epoch's sub-epoch reports

    def objective(trial: optuna.Trial) -> float:
        nonlocal used_s
        run = curves({p.key: p.suggest(trial) for p in study.search_space})
        values: list[float] = []
        trained, pruned = 0.0, False
        for fraction in first:  # as the study: judged within the first epoch, on the full val set
            run.epoch(1)
            values.append(run.probes[round(fraction, 6)])
            trial.report(values[-1], step=round(fraction / every))
            trained = fraction
            used_s += run.probe_s
            if trial.should_prune():
                pruned = True
                break
        epochs = 0
        while not pruned:
            value, last = run.epoch(epochs + 1)
            epochs, trained = epochs + 1, epochs + 1.0
            values.append(value)
            trial.report(value, step=round(epochs / every))
            if last:
                break
            pruned = trial.should_prune()
        # a stop within an epoch pays for its share of that epoch (and, as the study, one more
        # validation pass where it stopped)
        used_s += sum(run.seconds[:epochs]) + (trained - epochs) * run.seconds[0] + (
            run.probe_s if trained < 1 else 0.0)
        trial.set_user_attr("epochs", trained)
        if pruned:
            raise optuna.TrialPruned()
        return max(values) if study.direction == "maximize" else min(values)

    start = time.perf_counter()
    ostudy.optimize(objective, n_trials=study.n_trials)
    total = time.perf_counter() - start
    trained_now = sum(sum(r.seconds) for r in curves.runs.values()) - trained_before
    trials = ostudy.get_trials()
    return {"epochs": sum(t.user_attrs["epochs"] for t in trials), "best": ostudy.best_value,
            "tried": {repr(_key(t.params)): t.user_attrs["epochs"] for t in trials},
            "best_key": repr(_key(ostudy.best_trial.params)),
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "seconds": total - trained_now + used_s}


def parse_candidate(text: str):
    """`name` or `name:key=value,key=value` → a PrunerSpec."""
    return parse_pruner(from_text(text), where=f"--pruners {text}")


def label(spec) -> str:
    """The spec with only the arguments that differ from the registry's defaults."""
    default = dict(parse_pruner(spec.name).args)
    changed = [f"{k}={v}" for k, v in spec.args if default[k] != v]
    return f"{spec.name}:{','.join(changed)}" if changed else spec.name


def report(specs: list, results: dict, seeds: list[int], sign: float) -> None:
    """The table (sums and means over seeds) and the winner."""
    base = {s: results[specs[0], s] for s in seeds}
    full = sum(base[s]["epochs"] for s in seeds)
    print(f"\n{'pruner':44} {'epochs':>7} {'share':>6} {'pruned':>6} {'wall s':>7} {'best':>7} "
          f"{'regret pp':>9} {'worst':>6}   (epochs trained, fractions included: the share of batches)")
    rows = []
    for spec in specs:
        r = [results[spec, s] for s in seeds]
        regret = [100 * sign * (base[s]["best"] - results[spec, s]["best"]) for s in seeds]
        epochs = sum(x["epochs"] for x in r)
        rows.append((spec, epochs / full, statistics.mean(regret), max(regret)))
        pruned, wall, best = (statistics.mean(x[k] for x in r) for k in ("pruned", "seconds", "best"))
        print(f"{label(spec):44} {epochs:7.1f} {100 * epochs / full:5.0f}% {pruned:6.1f} {wall:7.0f} "
              f"{best:7.4f} {rows[-1][2]:+9.2f} {rows[-1][3]:+6.2f}")
    ok = [row for row in rows if row[2] <= TARGET_REGRET_PP]
    spec, share, mean, worst = min(ok, key=lambda row: row[1])
    met = "meets" if share <= TARGET_SHARE else "misses"
    print(f"winner: {label(spec)} at {100 * share:.0f}% of the unpruned epochs, regret {mean:+.2f} pp mean, "
          f"{worst:+.2f} pp worst ({met} the target of <= {100 * TARGET_SHARE:.0f}% with mean regret "
          f"<= {TARGET_REGRET_PP} pp)")


def probe_cost(study: records.StudyConfig, folder: str, steps: int = 40) -> str:
    """What one sub-epoch report costs at this fidelity: a val pass against a training epoch (its
    batches timed on the module's own step, a plain loop's rate)."""
    from mhtrain.train import build

    b = build(with_values(search_base(study.experiment, study.overrides), [f"paths.output_dir={folder}"]))
    dm, model = b.datamodule, b.model
    dm.prepare_data()
    dm.setup("fit")
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    train, val = dm.train_dataloader(), dm.val_dataloader()
    batches, steps = iter(train), min(steps, len(train) - 5)
    model.train()
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        opt.zero_grad()
        model.training_step(next(batches), i).backward()
        opt.step()
    epoch_s = (time.perf_counter() - start) / steps * len(train)
    model.evaluate(val)  # warm
    start = time.perf_counter()
    model.evaluate(val)
    val_s = time.perf_counter() - start
    return (f"a sub-epoch report costs one val pass: {val_s:.2f} s over {len(val.index):,} images, "
            f"{100 * val_s / epoch_s:.1f}% of a training epoch ({epoch_s:.1f} s for {len(train)} batches)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="sampler seeds, as offsets from the study seed")
    ap.add_argument("--n-trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, help="max epochs = max resource (default: the experiment's)")
    ap.add_argument("--train-subset", type=int, default=1500, help="0: every training image")
    ap.add_argument("--val-subset", type=int, default=2000, help="0: every validation image")
    ap.add_argument("--pruners", nargs="+", default=CANDIDATES,
                    help="name or name:key=value,...; none (the baseline) always runs")
    ap.add_argument("--results", type=Path, help="JSON file keeping every (seed, pruner) result as it "
                    "comes: a rerun with the same flags computes only what is missing")
    ap.add_argument("--probe-cost", action="store_true",
                    help="only time one sub-epoch report against a training epoch at this fidelity")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fidelity = [f"data.{k}={v or 'null'}" for k, v in (("train_subset", args.train_subset),
                                                         ("val_subset", args.val_subset))]
    if args.epochs:
        fidelity.append(f"trainer.max_epochs={args.epochs}")
    study = study_config.load("loss_weights", n_trials=args.n_trials, extra_overrides=fidelity)
    max_epochs = int(study_config.base_config(study).trainer.max_epochs)
    if args.probe_cost:
        with tempfile.TemporaryDirectory() as tmp:
            print(probe_cost(study, tmp), flush=True)
        return
    specs = [parse_candidate(p) for p in args.pruners]
    baseline = parse_pruner("none")
    specs = [baseline, *(s for s in specs if s != baseline)]  # regret and share are against it
    seeds = args.seeds
    parts = math.lcm(*(round(1 / s.report_every) for s in specs))  # every spec's first-epoch reports
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"optuna {optuna.__version__}; study {study.name} ({study.sampler}), {args.n_trials} trials x "
          f"{max_epochs} epochs, train_subset={args.train_subset}, val_subset={args.val_subset}, "
          f"sampler seeds {seeds}", flush=True)
    where = f"{args.n_trials}x{max_epochs} {args.train_subset}/{args.val_subset}"
    kept = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}
    results = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            curves = Curves(study, f"{tmp}/runs", parts)
            try:
                for spec in specs:
                    name = f"{where} seed {seed} {spec}"
                    r = kept.get(name) or replay(study, spec, seed, curves, max_epochs,
                                                 f"sqlite:///{tmp}/bench.db")
                    results[spec, seed] = kept[name] = r
                    if args.results:
                        args.results.write_text(json.dumps(kept, indent=1))
                    # where the unpruned search's best configuration went in this one
                    got = r.get("tried", {}).get(results[baseline, seed].get("best_key"), "not tried")
                    print(f"seed {seed} {label(spec):44} epochs {r['epochs']:6.1f} pruned {r['pruned']:3d} "
                          f"best {r['best']:.4f} wall {r['seconds']:6.0f} s; the unpruned best "
                          f"{got if 'tried' in r else '?'}{' epochs' if isinstance(got, int) else ''} "
                          f"[{time.perf_counter() - start:5.0f} s]", flush=True)
            finally:
                curves.close()
    report(specs, results, seeds, 1.0 if study.direction == "maximize" else -1.0)
    print(f"bench wall time {time.perf_counter() - start:.0f} s (each configuration trained once)")


if __name__ == "__main__":
    main()
