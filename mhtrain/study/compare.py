"""Multitask versus single-task: re-train each study's best configuration for K seeds, test it,
and state the difference with a confidence interval. Re-runs are stored in the study itself."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from scipy import stats

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.train import fit

RERUNS = "reruns"  # study user attribute: {"trial<n>|seed<s>|<extra overrides>": test metrics}
RERUN_MODE = ["test=true", "trainer.enable_progress_bar=false"]


def rerun_key(trial: optuna.trial.FrozenTrial, seed: int, extra: Sequence[str]) -> str:
    return "|".join([f"trial{trial.number}", f"seed{seed}", *extra])


def test_metric(ostudy: optuna.Study) -> str:
    """The test counterpart of the study's val metric (val/digit_acc -> test/digit_acc)."""
    metric = (ostudy.metric_names or [None])[0] or ostudy.user_attrs["config"]["metric"]
    return "test/" + metric.removeprefix("val/")


def rerun_best(ostudy: optuna.Study, seeds: Sequence[int], extra: Sequence[str] = (),
               on_done: Callable[[str, int, float, bool], None] = lambda *_: None) -> list[float]:
    """Test accuracy of the best trial re-trained with each seed; stored runs are not repeated."""
    best = ostudy.best_trial
    metric = test_metric(ostudy)
    kept = [o for o in best.user_attrs["overrides"] if not o.startswith("seed=")]
    values = []
    for seed in seeds:
        key = rerun_key(best, seed, extra)
        stored = ostudy.user_attrs.get(RERUNS, {})
        trained = key not in stored
        if trained:
            out = f"paths.output_dir=runs/compare/{ostudy.study_name}/trial{best.number}_seed{seed}"
            cfg = compose(best.user_attrs["experiment"],
                          [*kept, f"seed={seed}", *extra, *RERUN_MODE, out])
            result = fit(cfg)
            # re-read before writing: another compare may have stored other seeds meanwhile
            stored = {**ostudy.user_attrs.get(RERUNS, {}), key: result["test"]}
            ostudy.set_user_attr(RERUNS, stored)
        values.append(stored[key][metric])
        on_done(ostudy.study_name, seed, values[-1], trained)
    return values


@dataclass
class Verdict:
    """Welch's comparison of mean test accuracy, multitask minus single-task."""

    metric: str
    seeds: list[int]
    multitask: list[float]
    single: list[float]
    diff: float
    low: float
    high: float
    p: float

    def sentence(self) -> str:
        m = sum(self.multitask) / len(self.multitask)
        s = sum(self.single) / len(self.single)
        pp = lambda v: f"{100 * v:+.2f} pp"  # noqa: E731
        if math.isnan(self.p):
            effect = "cannot be judged (the runs have no spread)"
        elif self.p < 0.05:
            effect = "improves" if self.diff > 0 else "hurts"
        else:
            effect = "makes no significant difference to"
        return (f"Training the extra heads {effect} {self.metric}: multitask {100 * m:.2f}% vs "
                f"single-task {100 * s:.2f}%, difference {pp(self.diff)} "
                f"(95% CI {pp(self.low)} to {pp(self.high)}, Welch t-test p = {self.p:.3g}, "
                f"{len(self.multitask)} vs {len(self.single)} seeds).")


def verdict(metric: str, seeds: Sequence[int], multitask: list[float], single: list[float]) -> Verdict:
    if min(len(multitask), len(single)) < 2:
        raise ConfigError("a comparison needs at least 2 seeds per study (--seeds)")
    result = stats.ttest_ind(multitask, single, equal_var=False)
    ci = result.confidence_interval(0.95)
    diff = sum(multitask) / len(multitask) - sum(single) / len(single)
    return Verdict(metric, list(seeds), multitask, single, diff, float(ci.low), float(ci.high),
                   float(result.pvalue))
