"""Re-runs after a search: each study's best configuration re-trained for K seeds and tested once
on the official test split. Every re-run is stored on its study, so a comparison (or a sweep)
run again re-trains nothing and an interrupted one resumes where it stopped."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig

from mhtrain import ConfigError
from mhtrain.contract import metric_key
from mhtrain.evaluate.predictions import TestOutcomes
from mhtrain.result import FitResult
from mhtrain.study.confirm import chosen_trial
from mhtrain.study.replay import retrain_config
from mhtrain.study.storage import open_storage
from mhtrain.study.untrusted import study_metric, trial_record
from mhtrain.train import fit

RERUNS = "reruns"  # study user attribute: {"trial<n>|seed<s>|<extra overrides>": rerun record}
RERUN_MODE = ["test=true", "trainer.enable_progress_bar=false"]
RERUN_ROOT = "runs/compare"

# on_done(study name, seed, value of the test metric, trained now (False: stored), seconds)
OnDone = Callable[[str, int, float, bool, float], None]


def test_metric(ostudy: optuna.Study) -> str:
    """The test counterpart of the study's val metric (val/digit_acc -> test/digit_acc)."""
    return "test/" + study_metric(ostudy).removeprefix("val/")


def open_arms(storage_url: str, names: Sequence[str]) -> list[optuna.Study]:
    """Load every arm's study, refusing (before any training) a missing or unfinished one, a best
    trial whose stored record is more than the study's own keys and scalars, and arms that
    optimize different metrics."""
    storage = open_storage(storage_url, must_exist=True)  # a mistyped path creates nothing
    studies = []
    for name in names:
        try:
            ostudy = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"no study {name} in {storage_url}; run it first") from None
        trial_record(ostudy, chosen_trial(ostudy))
        studies.append(ostudy)
    metrics = {s.study_name: test_metric(s) for s in studies}
    if len(set(metrics.values())) > 1:
        raise ConfigError(f"the arms optimize different metrics {metrics}: nothing to compare")
    return studies


def existing(storage_url: str, names: Sequence[str]) -> list[optuna.Study]:
    """The studies of `names` that already exist in the storage (none if the storage does not):
    a sweep's ledger is checked before its searches create the rest."""
    try:
        storage = open_storage(storage_url, must_exist=True)
    except ConfigError:
        return []
    found = set(optuna.get_all_study_names(storage))
    return [optuna.load_study(study_name=n, storage=storage) for n in names if n in found]


@dataclass(frozen=True)
class Arm:
    """One study's best configuration re-trained once per seed: one stored record per seed
    (test metrics, `train/weight_<head>` per epoch, seconds, epochs). `label` names the arm in
    tables when its study's name says more (a sweep's `loss_weights@train_subset:500`)."""

    study: optuna.Study
    seeds: list[int]
    records: list[dict[str, Any]]
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.study.study_name

    @property
    def heads(self) -> list[str]:
        accs = [k.removeprefix("test/").removesuffix("_acc") for k in self.records[0]
                if k.startswith("test/") and k.endswith("_acc")]
        return [h for h in accs if h not in ("avg", "weighted")]

    def values(self, metric: str) -> list[float]:
        return [r[metric] for r in self.records]

    def weights(self, head: str) -> list[list[float]]:
        """The head's loss weight after each epoch, per seed (empty for runs stored without)."""
        return [r.get(metric_key("train", head, "weight"), []) for r in self.records]


def rerun_config(ostudy: optuna.Study, seed: int, extra: Sequence[str] = ()) -> DictConfig:
    """The composed config that re-trains the study's answer (`chosen_trial`) with `seed` and
    `extra` on top (a PBT member's: its schedule, replayed from its lineage's first member)."""
    fidelity = f"_{hashlib.sha1('|'.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    return retrain_config(ostudy, chosen_trial(ostudy), seed, RERUN_ROOT, [*extra, *RERUN_MODE], fidelity)


def record_of(result: FitResult, outcomes: TestOutcomes | None = None) -> dict[str, Any]:
    """What a re-run stores: its test metrics, time, epochs, each head's weight per epoch and,
    when collected, every head's per-image test outcomes (for a seed x image bootstrap)."""
    record: dict[str, Any] = {**result.test, "seconds": round(result.seconds, 2), "epochs": result.epochs,
                              **(outcomes.record() if outcomes else {})}
    for h in result.heads:
        key = metric_key("train", h, "weight")
        record[key] = [e[key] for e in result.train_history if key in e]
    return record


def rerun_best(ostudy: optuna.Study, seeds: Sequence[int], extra: Sequence[str] = (),
               on_done: OnDone = lambda *_: None, label: str | None = None) -> Arm:
    """Re-train the study's answer (`chosen_trial`: its best, or what `--confirm` chose) with each
    seed and test it; stored runs are not repeated. A run is stored under its trial, seed and
    fidelity: a new answer or other overrides re-train."""
    best = chosen_trial(ostudy)
    metric = test_metric(ostudy)
    records = []
    for seed in seeds:
        key = "|".join([f"trial{best.number}", f"seed{seed}", *extra])
        stored = ostudy.user_attrs.get(RERUNS, {})
        trained = key not in stored
        if trained:
            cfg = rerun_config(ostudy, seed, extra)
            shutil.rmtree(cfg.paths.output_dir, ignore_errors=True)  # what an interrupted run left
            outcomes = TestOutcomes()
            record = record_of(fit(cfg, callbacks=[outcomes]), outcomes)
            # re-read before writing: another compare may have stored other seeds meanwhile
            stored = {**ostudy.user_attrs.get(RERUNS, {}), key: record}
            ostudy.set_user_attr(RERUNS, stored)
        records.append(stored[key])
        on_done(ostudy.study_name, seed, records[-1][metric], trained, records[-1].get("seconds", 0.0))
    return Arm(ostudy, list(seeds), records, label)


def rerun_arms(studies: Sequence[optuna.Study], seeds: Sequence[int], extra: Sequence[str] = (),
               on_done: OnDone = lambda *_: None) -> list[Arm]:
    """`rerun_best` for every arm, seed by seed across the arms: a comparison cut short leaves
    every arm with the same seeds stored, so `--seeds N` reports them without re-training."""
    for seed in seeds:
        for ostudy in studies:
            rerun_best(ostudy, [seed], extra, on_done)
    return [rerun_best(ostudy, seeds, extra) for ostudy in studies]  # all stored by now
