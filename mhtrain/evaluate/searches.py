"""Repeated searches (`compare --study-seeds N`): each arm's search run again with N - 1 more study
seeds, so a verdict's interval covers what the search chose as well as the training seed. Search j
of arm A is the study `A@study_seed:j` in the same storage (j = 0 is A itself), made from the same
study config, search overrides and budget (checked against what A recorded) with study seed
A's + j; its answer is re-trained with
seeds of its own (first + j K ... first + j K + K - 1, shared across the arms), so the searches'
differences are independent and each is paired by seed within itself. The unit of the verdict is
then one search: its mean over its K seeds (the t-test on N cluster means, exact for this balanced
design). Searches and re-runs are stored: run again, nothing is repeated."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import optuna

from mhtrain import ConfigError
from mhtrain.evaluate import predictions, variance
from mhtrain.evaluate.document import Table
from mhtrain.evaluate.reruns import Arm, OnDone, rerun_arms
from mhtrain.evaluate.stats import Contrast
from mhtrain.study import opening, records, runner, study_config
from mhtrain.study.confirm import chosen_trial
from mhtrain.study.untrusted import trial_record


def name_of(arm: str, j: int) -> str:
    """The study of arm `arm`'s search j: the arm itself for j = 0."""
    return arm if j == 0 else f"{arm}@study_seed:{j}"


def seeds_of(first: int, per: int, j: int) -> list[int]:
    """The training seeds of search j's re-runs: a block of their own after the earlier searches'."""
    return list(range(first + j * per, first + (j + 1) * per))


def repeat_config(ostudy: optuna.Study, j: int, n_trials: int | None,
                  search: Sequence[str]) -> records.StudyConfig:
    """Search j of the arm `ostudy`: its local config `conf/study/<arm>.yaml` with the command
    line's `search` overrides and budget, study seed + j. Nothing is taken from the storage: the
    repeat is refused in one line unless the arm's recorded study is this same search (experiment,
    space, fixed overrides with the fidelity, budget, seed, sampler, pruner), so that the
    repeats differ from it in their study seed alone."""
    arm = ostudy.study_name
    where = f"--study-seeds: study {arm}"
    try:
        base = study_config.load(arm)
    except ConfigError:
        raise ConfigError(f"{where} has no config conf/study/{arm}.yaml to repeat its search with") from None
    study = study_config.load(arm, name=name_of(arm, j), seed=base.seed + j, n_trials=n_trials,
                       extra_overrides=list(search))
    stored = opening.stored_config(ostudy) or {}
    ours = {**study.to_dict(), "seed": base.seed}
    changes = opening.identity_changes(stored, study) + [
        f"{k}: {stored.get(k)!r} -> {ours[k]!r}" for k in ("n_trials", "seed", "sampler", "pruner")
        if stored.get(k) != ours[k]]
    if changes:
        raise ConfigError(f"{where} was searched otherwise than conf/study/{arm}.yaml with these --search "
                          f"and --n-trials ({'; '.join(changes)}); give its search's own overrides "
                          "(--search KEY=VALUE) and budget (--n-trials)")
    return study


@dataclass(frozen=True)
class Searches:
    """Per search j, per arm (in the arms' order): the re-trained answer of that search."""

    arms: list[list[Arm]]
    per: int  # re-runs (seeds) per search

    def of(self, name: str) -> list[Arm]:
        """Arm `name`'s searches, j = 0 first."""
        return [next(a for a in row if a.name == name) for row in self.arms]


def run(studies: Sequence[optuna.Study], n: int, storage_url: str, first: int, per: int,
        extra: Sequence[str], on_done: OnDone, n_trials: int | None = None, search: Sequence[str] = (),
        say: Callable[[str], None] = print) -> Searches:
    """Check every repeated search's config, then run the searches (stored ones resume), then
    re-train each search's answer on its own block of seeds, search by search."""
    configs = [[repeat_config(s, j, n_trials, search) for s in studies] for j in range(1, n)]  # before work
    rows = [list(studies)]
    for j, row in enumerate(configs, 1):
        found = []
        for config in row:
            ostudy, outcome = runner.run(config, storage_url, progress=False)
            if outcome.interrupted:
                raise KeyboardInterrupt
            trial_record(ostudy, chosen_trial(ostudy))
            say(f"search {j} of {config.name.split('@')[0]}: {config.name}, best {ostudy.best_value:.4f} "
                f"(trial {ostudy.best_trial.number})")
            found.append(ostudy)
        rows.append(found)
    arms = []
    for j, row in enumerate(rows):
        trained = rerun_arms(row, seeds_of(first, per, j), extra, on_done)
        arms.append([Arm(a.study, a.seeds, a.records, s.study_name)
                     for a, s in zip(trained, studies, strict=True)])
    return Searches(arms, per)


def pooled(searches: Searches, name: str) -> Arm:
    """Arm `name` as one value per search (its mean over the search's seeds): what the verdict
    compares. Each record averages the search's numeric test metrics; time, epochs and runs add up
    (so the cost per epoch is the runs', not the searches')."""
    records: list[dict[str, Any]] = []
    for a in searches.of(name):
        keys = [k for k in a.records[0] if k.startswith("test/") and isinstance(a.records[0][k], float)]
        records.append({**{k: sum(r[k] for r in a.records) / len(a.records) for k in keys},
                        "seconds": sum(r.get("seconds", 0.0) for r in a.records),
                        "epochs": sum(r.get("epochs", 0) for r in a.records), "runs": len(a.records)})
    first = searches.of(name)[0]
    return Arm(first.study, list(range(len(records))), records, name)


def per_run(searches: Searches, arm: str, other: str, metric: str) -> list[list[float]]:
    """arm − other in `metric`, run by run: one row per search, one value per shared seed."""
    return [[x - y for x, y in zip(a.values(metric), b.values(metric), strict=True)]
            for a, b in zip(searches.of(arm), searches.of(other), strict=True)]


def per_image(searches: Searches, arm: str, other: str, metric: str) -> np.ndarray | None:
    """arm − other in per-image correctness, runs (search-major) x test images; None when a run
    was stored without its outcomes."""
    rows = []
    for a, b in zip(searches.of(arm), searches.of(other), strict=True):
        for ra, rb in zip(a.records, b.records, strict=True):
            x, y = predictions.outcomes(ra, metric), predictions.outcomes(rb, metric)
            if x is None or y is None:
                return None
            rows.append(x - y)
    return np.asarray(rows)


def _cell(v: float, key: str, shares: dict[str, float]) -> str:
    """One part of the variance: the SD it adds to the difference, in pp, and its share."""
    if math.isnan(v):
        return "n/a"
    share = shares[key]
    return f"{100 * math.sqrt(v):.3f} ({'–' if math.isnan(share) else f'{100 * share:.0f}%'})"


def split_table(searches: Searches, contrasts: Sequence[Contrast], metric: str, level: float) -> Table:
    """Per contrast: how the estimated difference's variance splits between the search, the
    training seed and the test images (SD of each part in pp, its share), and the seed x image
    bootstrap interval beside the verdict's."""
    rows = [["contrast", "search (pp, share)", "training seed (pp, share)", "test images (pp, share)",
             f"seed × image bootstrap {100 * level:.0f}% interval (pp)"]]
    n = len(searches.arms)
    for c in contrasts:
        m = per_image(searches, c.arm, c.reference, metric)
        parts = variance.split(per_run(searches, c.arm, c.reference, metric), m)
        cell = partial(_cell, shares=parts.shares())
        boot = ("n/a (runs stored without per-image outcomes)" if m is None else
                "{:+.2f} to {:+.2f}".format(*(100 * x for x in variance.bootstrap(m, n, level))))
        rows.append([f"{c.arm} − {c.reference}",
                     cell(parts.search, "search") if n > 1 else "n/a (one search per arm)",
                     cell(parts.seed, "training seed"), cell(parts.images, "test images"), boot])
    return rows
