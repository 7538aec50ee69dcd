"""Confirm a search's best against its runners-up. A search ranks its trials by one noisy
evaluation each: its best is often a few validation images ahead of the next, within the binomial
error of one evaluation and the seed noise, and the top is then a tie the ranking hides.

`confirm` re-trains the top K configurations with S fresh seeds (seeds no trial of the study used),
at the study's fidelity, on the validation split only (the test split stays unread), pairs the runs
by seed and names a winner only when it beats each of the others (paired t-test, Holm over the
K - 1 comparisons). Otherwise it says "indistinguishable at this budget", lists the tied ones and
the one `chosen` by the rule below. The result is stored on the study (`confirmation`), so what
reads the study later (export, compare, the dashboard) can use it."""

from __future__ import annotations

import argparse
import math
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.evaluate.stats import LEVEL, holm, paired
from mhtrain.study.replay import retrain_config
from mhtrain.study.untrusted import study_metric

ATTR = "confirmation"  # study user attribute: Confirmation.as_attr()
TOP, SEEDS = 3, 3  # the defaults of --confirm and --confirm-seeds
ROOT = "runs/confirm"
TIED = "indistinguishable at this budget"
RULE = "the best-ranked by the search among the tied"  # how `chosen` is picked without a winner


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--confirm [K] and --confirm-seeds S on a study's command line."""
    p.add_argument("--confirm", type=int, nargs="?", const=TOP, metavar="K",
                   help=f"after the search, re-train the top K configurations (default {TOP}) with "
                        "fresh seeds on the validation split and name a winner only if it beats "
                        "each other one (paired t-test, Holm)")
    p.add_argument("--confirm-seeds", type=int, default=SEEDS, metavar="S",
                   help=f"fresh seeds per configuration for --confirm (default {SEEDS})")


def check(args: argparse.Namespace) -> None:
    if args.confirm is not None and args.confirm < 2:
        raise ConfigError(f"--confirm {args.confirm}: confirm at least 2 configurations")
    if args.confirm_seeds < 2:
        raise ConfigError(f"--confirm-seeds {args.confirm_seeds}: a paired test needs at least 2 seeds")


@dataclass(frozen=True)
class Confirmation:
    """The top trials (search rank order), their values per fresh seed, and the verdict."""

    metric: str
    direction: str
    trials: list[int]
    seeds: list[int]
    values: dict[int, list[float]]  # trial number -> metric per seed, in `seeds` order
    candidate: int  # the best mean over the fresh seeds
    p_holm: dict[int, float]  # candidate against each other trial, Holm over K - 1
    winner: int | None
    tied: list[int]  # the candidate and every trial it does not beat
    chosen: int  # the winner, else RULE applied to `tied`

    def mean(self, trial: int) -> float:
        return sum(self.values[trial]) / len(self.values[trial])

    def lines(self) -> list[str]:
        """The verdict for the console: every trial's mean, then the winner or the tie."""
        out = [f"confirmation: top {len(self.trials)} trials re-trained with fresh seeds "
               f"{', '.join(map(str, self.seeds))} on the validation split ({self.metric}, mean over seeds):"]
        for t in self.trials:
            vs = "" if t == self.candidate else (
                f"; vs trial {self.candidate}: Holm p = "
                f"{'n/a (no spread)' if math.isnan(self.p_holm[t]) else f'{self.p_holm[t]:.3g}'}")
            each = ", ".join(f"{v:.4f}" for v in self.values[t])
            out.append(f"  trial {t}: {self.mean(t):.4f} ({each}){vs}")
        if self.winner is not None:
            out.append(f"winner: trial {self.winner}, better than each other one (paired t-test, "
                       f"Holm over {len(self.trials) - 1}, p < {1 - LEVEL:.2g})")
        else:
            out.append(f"{TIED}: trials {', '.join(map(str, self.tied))}; export uses trial "
                       f"{self.chosen}, {RULE}")
        return out

    def as_attr(self) -> dict:
        """JSON for the study's user attribute (NaN as None, keys as strings)."""
        d = asdict(self)
        d["values"] = {str(k): v for k, v in self.values.items()}
        d["p_holm"] = {str(k): (None if math.isnan(v) else v) for k, v in self.p_holm.items()}
        return d


def judge(metric: str, direction: str, trials: Sequence[int], seeds: Sequence[int],
          values: dict[int, list[float]]) -> Confirmation:
    """The verdict on runs already made: the best mean against each other trial seed by seed;
    an undefined test (no spread in the differences) counts as not beaten, and counts in Holm's
    family of K - 1."""
    sign = 1.0 if direction == "maximize" else -1.0
    mean = {t: sum(values[t]) / len(values[t]) for t in trials}
    candidate = max(trials, key=lambda t: (sign * mean[t], -trials.index(t)))  # ties: search rank
    others = [t for t in trials if t != candidate]
    raw = [paired(values[candidate], values[t]).p for t in others]
    adjusted = holm([1.0 if math.isnan(p) else p for p in raw])
    p_holm = {t: (math.nan if math.isnan(p) else a) for t, p, a in zip(others, raw, adjusted, strict=True)}
    beaten = {t for t in others if not math.isnan(p_holm[t]) and p_holm[t] < 1 - LEVEL
              and sign * (mean[candidate] - mean[t]) > 0}
    winner = candidate if len(beaten) == len(others) else None
    tied = [t for t in trials if t not in beaten]
    chosen = winner if winner is not None else min(tied, key=trials.index)
    return Confirmation(metric, direction, list(trials), list(seeds), {t: list(values[t]) for t in trials},
                        candidate, p_holm, winner, tied, chosen)


def chosen_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's answer, the trial export and compare hand on: the one `--confirm` chose on
    fresh seeds (the winner, or its rule among the tied), else the search's best. The stored
    choice is data: it must name a complete trial of this study."""
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study {study.study_name} has no completed trial yet; run it first") from None
    confirmation = study.user_attrs.get(ATTR)
    if confirmation is None:
        return best
    chosen = confirmation.get("chosen") if isinstance(confirmation, dict) else None
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen not in complete:
        raise ConfigError(f"study {study.study_name}: its stored confirmation chooses {chosen!r}, not a "
                          "complete trial; run --confirm again or remove the study's `confirmation`")
    return complete[chosen]


def top_trials(ostudy: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k best complete trials, best first (the search's ranking)."""
    done = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    maximize = ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))
    if len(ranked) < 2:
        raise ConfigError(f"--confirm: study {ostudy.study_name} has {len(ranked)} complete trial(s); "
                          "nothing to confirm against")
    return ranked[:k]


def fresh_seeds(ostudy: optuna.Study, n: int) -> list[int]:
    """n seeds above every seed a trial of the study used: none of its runs is repeated."""
    used = [int(o.removeprefix("seed=")) for t in ostudy.get_trials(deepcopy=False)
            for o in t.user_attrs.get("overrides", []) if re.fullmatch(r"seed=-?\d+", str(o))]
    start = max(used, default=-1) + 1
    return list(range(start, start + n))


def confirm_config(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, seed: int) -> DictConfig:
    """The trial's configuration at the study's fidelity with `seed` (a PBT member's: its replayed
    schedule), trained without the test split."""
    return retrain_config(ostudy, trial, seed, ROOT, ["test=false", "trainer.enable_progress_bar=false"])


def confirm(ostudy: optuna.Study, k: int = TOP, n_seeds: int = SEEDS,
            say: Callable[[str], None] = print) -> Confirmation:
    """Re-train the top k trials with n_seeds fresh seeds (seed by seed across the trials), judge
    them, store the verdict on the study and return it."""
    from mhtrain.train import fit  # Lightning: only once a confirmation runs

    top = top_trials(ostudy, k)
    seeds = fresh_seeds(ostudy, n_seeds)
    metric = study_metric(ostudy)
    configs = {(t.number, s): confirm_config(ostudy, t, s) for s in seeds for t in top}  # all checked first
    values: dict[int, list[float]] = {t.number: [] for t in top}
    for s in seeds:
        for t in top:
            cfg = configs[(t.number, s)]
            shutil.rmtree(cfg.paths.output_dir, ignore_errors=True)  # what an interrupted run left
            value = fit(cfg).best[metric]
            values[t.number].append(value)
            say(f"  confirm trial {t.number} seed {s}: {metric} = {value:.4f}")
    direction = "maximize" if ostudy.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    result = judge(metric, direction, [t.number for t in top], seeds, values)
    ostudy.set_user_attr(ATTR, result.as_attr())
    return result


def val_images(cfg: DictConfig) -> int:
    """The images a trial is validated on: `data.val_subset` of them, else `data.val_size`."""
    return int(cfg.data.get("val_subset") or cfg.data.val_size)


def precision_lines(ostudy: optuna.Study, val_images: int | None) -> list[str]:
    """Without a confirmation: how precise the best value is, as one evaluation on the validation
    set (binomial SE), and how far the runner-up is, in images."""
    metric = (ostudy.metric_names or [""])[0]
    if not val_images or not metric.endswith("_acc"):
        return []
    try:
        best, runner = top_trials(ostudy, 2)
    except ConfigError:
        return []
    se = math.sqrt(best.value * (1 - best.value) / val_images)
    gap = round(abs(best.value - runner.value) * val_images)
    return [f"  binomial SE of the best on {val_images:,} validation images: {100 * se:.2f} pp; "
            f"runner-up trial {runner.number} at {runner.value:.4f}, {gap} image(s) behind "
            f"(SE of a difference of two such evaluations: {100 * math.sqrt(2) * se:.2f} pp); "
            f"--confirm re-trains the top on fresh seeds to tell them apart"]
