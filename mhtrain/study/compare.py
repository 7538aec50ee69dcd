"""Arms against a reference: re-train each study's best configuration for K seeds, test it once,
and compare mean test accuracy with 95% confidence intervals, Welch's t-test and Holm's correction
for the several arms. Re-runs are stored in the studies, so a second comparison re-trains nothing."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback
from scipy import stats

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.models.module import metric_key
from mhtrain.study import quiet_lightning
from mhtrain.study.storage import open_storage
from mhtrain.train import fit

quiet_lightning()

RERUNS = "reruns"  # study user attribute: {"trial<n>|seed<s>|<extra overrides>": rerun record}
RERUN_MODE = ["test=true", "trainer.enable_progress_bar=false"]
LEVEL = 0.95  # of every confidence interval; also the significance threshold 1 - LEVEL


def rerun_key(trial: optuna.trial.FrozenTrial, seed: int, extra: Sequence[str]) -> str:
    return "|".join([f"trial{trial.number}", f"seed{seed}", *extra])


def test_metric(ostudy: optuna.Study) -> str:
    """The test counterpart of the study's val metric (val/digit_acc -> test/digit_acc)."""
    metric = (ostudy.metric_names or [None])[0] or ostudy.user_attrs["config"]["metric"]
    return "test/" + metric.removeprefix("val/")


def open_arms(storage_url: str, names: Sequence[str]) -> list[optuna.Study]:
    """Load every arm's study, refusing (before any training) a missing or unfinished one and
    arms that optimize different metrics."""
    storage = open_storage(storage_url, must_exist=True)  # a mistyped path creates nothing
    studies = []
    for name in names:
        try:
            ostudy = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"no study {name} in {storage_url}; run it first") from None
        try:
            ostudy.best_trial  # noqa: B018 - raises when no trial has completed
        except ValueError:
            raise ConfigError(f"study {name} has no completed trial; run it first") from None
        studies.append(ostudy)
    metrics = {s.study_name: test_metric(s) for s in studies}
    if len(set(metrics.values())) > 1:
        raise ConfigError(f"the arms optimize different metrics {metrics}: nothing to compare")
    return studies


class WeightHistory(Callback):
    """Each training epoch's effective loss weight per head of the model being fitted."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(pl_module.weights())


@dataclass(frozen=True)
class Arm:
    """One study's best configuration re-trained once per seed: one stored record per seed
    (test metrics, `train/weight_<head>` per epoch, seconds, epochs)."""

    study: optuna.Study
    seeds: list[int]
    records: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.study.study_name

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


def rerun_best(ostudy: optuna.Study, seeds: Sequence[int], extra: Sequence[str] = (),
               on_done: Callable[[str, int, float, bool], None] = lambda *_: None) -> Arm:
    """Re-train the best trial with each seed and test it; stored runs are not repeated."""
    best = ostudy.best_trial
    metric = test_metric(ostudy)
    kept = [o for o in best.user_attrs["overrides"] if not o.startswith("seed=")]
    fidelity = f"_{hashlib.sha1('|'.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    records = []
    for seed in seeds:
        key = rerun_key(best, seed, extra)
        stored = ostudy.user_attrs.get(RERUNS, {})
        trained = key not in stored
        if trained:
            out = f"paths.output_dir=runs/compare/{ostudy.study_name}/trial{best.number}_seed{seed}{fidelity}"
            cfg = compose(best.user_attrs["experiment"], [*kept, f"seed={seed}", *extra, *RERUN_MODE, out])
            history = WeightHistory()
            result = fit(cfg, callbacks=[history])
            record = {**result["test"], "seconds": round(result["seconds"], 2), "epochs": result["epochs"]}
            for h in result["heads"]:
                record[metric_key("train", h, "weight")] = [e[h] for e in history.epochs]
            # re-read before writing: another compare may have stored other seeds meanwhile
            stored = {**ostudy.user_attrs.get(RERUNS, {}), key: record}
            ostudy.set_user_attr(RERUNS, stored)
        records.append(stored[key])
        on_done(ostudy.study_name, seed, records[-1][metric], trained)
    return Arm(ostudy, list(seeds), records)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval; runs without spread give a zero-width one."""
    n, mean = len(values), sum(values) / len(values)
    sem = stats.sem(values) if n > 1 else math.nan
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)). Undefined (NaN) p-values stay NaN and do
    not count in m."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Contrast:
    """One arm minus the reference in mean test `metric`: Welch's t-test, Holm-adjusted over
    all the arms compared with the same reference."""

    arm: str
    reference: str
    metric: str
    arm_values: list[float]
    reference_values: list[float]
    diff: float
    low: float
    high: float
    p: float
    p_holm: float
    family: int

    def sentence(self) -> str:
        m = 100 * sum(self.arm_values) / len(self.arm_values)
        r = 100 * sum(self.reference_values) / len(self.reference_values)
        pp = lambda v: f"{100 * v:+.2f} pp"  # noqa: E731
        than = f"{self.metric} compared with {self.reference}"
        if math.isnan(self.p):
            effect = f"cannot be judged on {than} (the runs have no spread)"
        elif self.p_holm < 1 - LEVEL:
            effect = f"{'improves' if self.diff > 0 else 'hurts'} {than}"
        else:
            effect = f"makes no significant difference to {than}"
        return (f"{self.arm} {effect}: {m:.2f}% vs {r:.2f}%, difference {pp(self.diff)} "
                f"({100 * LEVEL:.0f}% CI {pp(self.low)} to {pp(self.high)}, Welch t-test p = {self.p:.3g}, "
                f"Holm-adjusted p = {self.p_holm:.3g} over {self.family} comparison"
                f"{'s' if self.family != 1 else ''}; {len(self.arm_values)} vs "
                f"{len(self.reference_values)} seeds).")


def contrasts(arms: Sequence[Arm], reference: Arm, metric: str) -> list[Contrast]:
    """Every arm but the reference against it, p-values Holm-adjusted as one family."""
    others = [a for a in arms if a.name != reference.name]
    ref = reference.values(metric)
    if min(len(ref), *(len(a.records) for a in others)) < 2:
        raise ConfigError("a comparison needs at least 2 seeds per arm (--seeds)")
    tests = [stats.ttest_ind(a.values(metric), ref, equal_var=False) for a in others]
    adjusted = holm([float(t.pvalue) for t in tests])
    out = []
    for arm, t, p_holm in zip(others, tests, adjusted, strict=True):
        ci = t.confidence_interval(LEVEL)
        diff = sum(arm.values(metric)) / len(arm.records) - sum(ref) / len(ref)
        out.append(Contrast(arm.name, reference.name, metric, arm.values(metric), ref, diff,
                            float(ci.low), float(ci.high), float(t.pvalue), p_holm, len(others)))
    return out


def reference_sentence(reference: Arm, metric: str) -> str:
    mean, low, high = mean_ci(reference.values(metric))
    return (f"{reference.name} (the reference): {metric} {100 * mean:.2f}% "
            f"({100 * LEVEL:.0f}% CI {100 * low:.2f} to {100 * high:.2f}%, {len(reference.records)} seeds).")
