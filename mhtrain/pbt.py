"""Population-based training in one place (Jaderberg et al., 2017; the rules of Ray Tune's
`PopulationBasedTraining`): its settings (`pbt:` in a study config, Ray's defaults), the keys an
exploit may change (declared here once: `MUTABLE`), explore, exploit, and the schedule record each
member stores. It imports no Optuna, torch or Lightning: a population hands its members in through
the `Members` protocol and a study its search space through `Searched`, so the stacked model, the
study and the solo replay (`mhtrain.schedule`) all read the same rules.

The schedule record: one trial per member; its params are the values it started with; its user
attribute `pbt_schedule` is its schedule and lineage at once, one segment per stretch of epochs,
`{"epoch": epochs trained when it began, "parent": the trial whose state it copied then (None: its
own start), "parent_epoch": the epochs that state had trained (a copy only), <searched key>: value,
...}`, stored again at each exploit, so a killed worker loses no segment already begun. A member's
weights at its end trained along its lineage: its parent's up to `parent_epoch` (recursively), then
its own last segment."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from mhtrain import ConfigError

LR = "model.optimizer.lr"
WEIGHTS = "model.loss_weights."  # + head name
# What an exploit may change, the one declaration: the values a stacked population holds as
# per-member rows it reads every step. A key ending in "." names every key under it.
MUTABLE: tuple[str, ...] = (LR, WEIGHTS)
SCHEDULE = "pbt_schedule"  # trial user attribute: the member's segments (see above)
PBT_KEYS = ("interval", "quantile", "resample_probability", "perturbation_factors")


def mutable(key: str) -> bool:
    """Whether an exploit may change `key` mid-run."""
    return any(key == m or (m.endswith(".") and key.startswith(m) and len(key) > len(m)) for m in MUTABLE)


def mutable_text() -> str:
    return " and ".join(f"{m}<head>" if m.endswith(".") else m for m in MUTABLE)


@dataclass(frozen=True)
class PbtSpec:
    """When members exploit and how they explore. Defaults are Ray's `PopulationBasedTraining`
    except `interval`: Ray's perturbation_interval is 60 of its time_attr (seconds); here epochs."""

    interval: int = 1  # epochs between a member's chances to exploit
    quantile: float = 0.25  # bottom copies top (Ray: quantile_fraction)
    resample_probability: float = 0.25  # draw afresh from the search space instead of perturbing
    perturbation_factors: tuple[float, float] = (1.2, 0.8)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "perturbation_factors": list(self.perturbation_factors)}


def parse_pbt(raw: Any) -> PbtSpec:
    """`pbt:` of a study config: `true`/`{}` for the defaults, or a mapping of PBT_KEYS."""
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"pbt={raw!r}: must be true or a mapping like {{interval: 1, quantile: 0.25}}")
    unknown = sorted(set(raw) - set(PBT_KEYS))
    if unknown:
        raise ConfigError(f"pbt has unknown keys {unknown}; known: {', '.join(PBT_KEYS)}")
    spec = PbtSpec(**{k: tuple(v) if k == "perturbation_factors" else v for k, v in raw.items()})
    if not isinstance(spec.interval, int) or isinstance(spec.interval, bool) or spec.interval < 1:
        raise ConfigError(f"pbt.interval={spec.interval!r}: must be an integer >= 1 (epochs)")
    if not isinstance(spec.quantile, int | float) or not 0 < spec.quantile <= 0.5:
        raise ConfigError(f"pbt.quantile={spec.quantile!r}: must be in (0, 0.5]")
    if not isinstance(spec.resample_probability, int | float) or not 0 <= spec.resample_probability <= 1:
        raise ConfigError(f"pbt.resample_probability={spec.resample_probability!r}: must be in [0, 1]")
    factors = spec.perturbation_factors
    if not factors or any(not isinstance(f, int | float) or isinstance(f, bool) or f <= 0 for f in factors):
        raise ConfigError(f"pbt.perturbation_factors={list(factors)}: must be positive numbers")
    return spec


def check(keys: Iterable[str], scheduler: Any = None) -> None:
    """Refuse, before any work, a PBT search over keys a member cannot change mid-run, or a
    learning-rate scheduler (the experiment's `model.scheduler`), which would fight the perturbed
    learning rate."""
    for key in keys:
        if not mutable(key):
            raise ConfigError(f"search_space key {key}: population-based training perturbs only "
                              f"{mutable_text()}; search it in a study without pbt")
    if scheduler is not None:
        raise ConfigError("model.scheduler is set: population-based training sets each member's "
                          "learning rate itself; set model.scheduler=null")


def check_values(where: str, values: Iterable[str]) -> None:
    """Refuse a schedule entry (a replay's, a stored segment's) that sets a key no exploit may."""
    bad = sorted(k for k in values if not mutable(k))
    if bad:
        raise ConfigError(f"{where} sets {bad}: keys {mutable_text()} only (nothing else changes mid-run)")


class Searched(Protocol):
    """A searched key and its distribution (`mhtrain.study.params.Param`)."""

    key: str

    def sample(self, rng: random.Random) -> Any: ...

    def perturb(self, value: Any, factor: float, rng: random.Random) -> Any: ...


def explore(space: Sequence[Searched], spec: PbtSpec, values: Mapping[str, Any],
            rng: random.Random) -> dict[str, Any]:
    """Ray's explore over the mutable searched keys of `values` (a copied member's): each is drawn
    afresh with `resample_probability`, else perturbed by one of the factors, and kept in its
    range. A weight at 0 stays there unless drawn afresh."""
    out = dict(values)
    for p in (p for p in space if mutable(p.key)):
        if rng.random() < spec.resample_probability:
            out[p.key] = p.sample(rng)
        else:
            out[p.key] = p.perturb(values[p.key], rng.choice(spec.perturbation_factors), rng)
    return out


def segment(epoch: int, parent: int | None, space: Sequence[Searched],
            values: Mapping[str, Any], parent_epoch: int | None = None) -> dict[str, Any]:
    """One entry of `pbt_schedule`."""
    copied = {} if parent is None else {"parent_epoch": parent_epoch}
    return {"epoch": epoch, "parent": parent, **copied, **{p.key: values[p.key] for p in space}}


class Explorer(Protocol):
    """The supplier's side of PBT: new values for a copy, and hearing who copied whom."""

    def explore(self, values: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        """Values near `values` (the copied member's, by config key) within the search space."""

    def exploited(self, member: Any, parent: Any, epoch: int, parent_epoch: int,
                  values: Mapping[str, float]) -> None:
        """`member`, `epoch` epochs trained, copied `parent`'s state (`parent_epoch` epochs trained:
        members that joined at different times differ) and goes on with `values`."""


class Run(Protocol):
    """A training member as the exploit sees it (`mhtrain.population.runs.MemberRun`)."""

    member: Any
    history: list[dict[str, float]]  # one dict of val metrics per epoch trained

    def adopt(self, parent: Any, lr: float) -> None:
        """Go on from `parent`'s state (its early stopping) with learning rate `lr`."""


class Members(Protocol):
    """A population's mutable values and state by member index (`mhtrain.population.stacked.Stack`)."""

    def values(self, i: int) -> dict[str, float]:
        """Member `i`'s mutable values by config key."""

    def exploit(self, dst: int, src: int, values: Mapping[str, float]) -> None:
        """Member `dst` takes `src`'s whole state and goes on with `values`."""


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


class Controller:
    """Decides and applies the exploits at each epoch boundary of a population."""

    def __init__(self, pbt: Pbt) -> None:
        self.pbt, self.rng = pbt, random.Random(pbt.seed)
        self.last: dict[Any, int] = {}  # epochs a member had trained at its last chance

    def step(self, members: Members, runs: Sequence[Run]) -> list[tuple[int, int]]:
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
            values = pbt.explorer.explore(members.values(j), self.rng)
            members.exploit(i, j, values)
            run.adopt(runs[j], members.values(i)[LR])
            pbt.explorer.exploited(run.member, runs[j].member, len(run.history), len(runs[j].history), values)
            pairs.append((i, j))
        return pairs
