"""Population-based training inside one stacked population (Jaderberg et al., 2017; the rules of
Ray Tune's `PopulationBasedTraining`): every `interval` epochs a member in the bottom quantile
copies a random top-quantile member's whole state, a row copy with no I/O, and goes on with
hyperparameters its supplier perturbs. Which values are allowed is the supplier's (it knows the
search space); this module knows no Optuna."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mhtrain import ConfigError
from mhtrain.population.members import Member

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mhtrain.population.runs import MemberRun
    from mhtrain.population.stacked import Stack

LR = "model.optimizer.lr"
WEIGHTS = "model.loss_weights."  # + head name
# what an exploit may change: the values the stack holds as per-member rows it reads every step
MUTABLE = f"{LR} and {WEIGHTS}<head>"


def check(base: DictConfig, keys: Iterable[str]) -> None:
    """Refuse, before any work, a PBT search over keys a member cannot change mid-run, or a
    scheduler, which would fight the perturbed learning rate."""
    for key in keys:
        if key != LR and not key.startswith(WEIGHTS):
            raise ConfigError(f"search_space key {key}: population-based training perturbs only "
                              f"{MUTABLE}; search it in a study without pbt")
    if base.model.get("scheduler") is not None:
        raise ConfigError("model.scheduler is set: population-based training sets each member's "
                          "learning rate itself; set model.scheduler=null")


class Explorer(Protocol):
    """The supplier's side of PBT: new values for a copy, and hearing who copied whom."""

    def explore(self, values: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        """Values near `values` (the copied member's, by config key) within the search space."""

    def exploited(self, member: Member, parent: Member, epoch: int, parent_epoch: int,
                  values: Mapping[str, float]) -> None:
        """`member`, `epoch` epochs trained, copied `parent`'s state (`parent_epoch` epochs trained:
        members that joined at different times differ) and goes on with `values`."""


@dataclass(frozen=True)
class Pbt:
    """When and how members exploit: `metric` ranks them (its last epoch's value)."""

    explorer: Explorer
    metric: str
    maximize: bool = True
    interval: int = 1  # epochs between a member's chances to exploit (Ray: perturbation_interval)
    quantile: float = 0.25  # Ray's quantile_fraction
    seed: int = 0


def quantiles(scores: Mapping[int, float], quantile: float, maximize: bool) -> tuple[list[int], list[int]]:
    """(bottom, top) members by score, Ray's rule: ceil(n * quantile) each, at most n // 2; a
    non-finite score ranks last."""
    def rank(i: int) -> float:
        s = scores[i] if maximize else -scores[i]
        return s if math.isfinite(s) else -math.inf
    order = sorted(scores, key=rank)  # worst first; stable, so ties keep member order
    n = math.ceil(len(order) * quantile)
    n = min(n, len(order) // 2)
    return (order[:n], order[-n:]) if n else ([], [])


def hypers(stack: Stack, i: int) -> dict[str, float]:
    """Member `i`'s mutable values by config key."""
    weights = stack.rows["priors"][i].tolist()
    return {LR: stack.args[i]["lr"], **{WEIGHTS + h: w for h, w in zip(stack.heads, weights, strict=True)}}


def set_hypers(stack: Stack, i: int, values: Mapping[str, float]) -> None:
    """Member `i` goes on with `values` (config keys; missing ones stay)."""
    priors: Sequence[float] | None = None
    if any(k.startswith(WEIGHTS) for k in values):
        now = hypers(stack, i)
        priors = [float(values.get(WEIGHTS + h, now[WEIGHTS + h])) for h in stack.heads]
    stack.set_hypers(i, lr=values.get(LR), priors=priors)


class Controller:
    """Decides and applies the exploits at each epoch boundary of a population."""

    def __init__(self, pbt: Pbt) -> None:
        self.pbt, self.rng = pbt, random.Random(pbt.seed)
        self.last: dict[MemberRun, int] = {}  # epochs a member had trained at its last chance

    def step(self, stack: Stack, runs: Sequence[MemberRun]) -> list[tuple[int, int]]:
        """Every ready member in the bottom quantile copies one of the top's; returns the (member,
        parent) index pairs. Ready: `interval` epochs trained since its last chance (as Ray, a
        member's chance passes whether it copied or not). Newcomers (no epoch yet) take no part."""
        pbt = self.pbt
        self.last = {r: e for r, e in self.last.items() if r in runs}
        scores = {i: r.history[-1][pbt.metric] for i, r in enumerate(runs) if r.history}
        bottom, top = quantiles(scores, pbt.quantile, pbt.maximize)
        pairs = []
        for i in sorted(scores):
            run = runs[i]
            if len(run.history) - self.last.get(run, 0) < pbt.interval:
                continue
            self.last[run] = len(run.history)
            if i not in bottom:
                continue
            j = self.rng.choice(top)
            values = pbt.explorer.explore(hypers(stack, j), self.rng)
            stack.copy_member(i, j)
            set_hypers(stack, i, values)
            run.optimizer.param_groups[0]["lr"] = stack.args[i]["lr"]  # what `restack` reads back
            run.stopper = copy.deepcopy(runs[j].stopper)
            pbt.explorer.exploited(run.member, runs[j].member, len(run.history), len(runs[j].history), values)
            pairs.append((i, j))
        return pairs
