"""A study's population-based training: its settings (`pbt:` in a study config, Ray Tune's
defaults), its explore step within the study's search space, and what each trial records.

One trial per member. Its params are the values it started with; its user attribute
`pbt_schedule` is its schedule and lineage at once, one segment per stretch of epochs:
`{"epoch": epochs trained when it began, "parent": the trial whose state it copied then (None:
its own start), "parent_epoch": the epochs that state had trained (a copy only), <searched key>:
value, ...}`, stored again at each exploit, so a killed worker loses no segment already begun.
Its curve (intermediate values) runs on across copies. A member's weights at its end trained along
its lineage: its parent's up to `parent_epoch` (recursively), then its own last segment."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mhtrain import ConfigError
from mhtrain.study.params import Param

SCHEDULE = "pbt_schedule"  # trial user attribute: the member's segments (see above)
PBT_KEYS = ("interval", "quantile", "resample_probability", "perturbation_factors")


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


def explore(space: Sequence[Param], spec: PbtSpec, values: Mapping[str, Any],
            rng: random.Random) -> dict[str, Any]:
    """Ray's explore over the searched keys of `values` (a copied member's): each is drawn afresh
    with `resample_probability`, else perturbed by one of the factors, and kept in its range.
    A weight at 0 stays there unless drawn afresh."""
    out = dict(values)
    for p in space:
        if rng.random() < spec.resample_probability:
            out[p.key] = p.sample(rng)
        else:
            out[p.key] = p.perturb(values[p.key], rng.choice(spec.perturbation_factors), rng)
    return out


def segment(epoch: int, parent: int | None, space: Sequence[Param],
            values: Mapping[str, Any], parent_epoch: int | None = None) -> dict[str, Any]:
    """One entry of `pbt_schedule`."""
    copied = {} if parent is None else {"parent_epoch": parent_epoch}
    return {"epoch": epoch, "parent": parent, **copied, **{p.key: values[p.key] for p in space}}
