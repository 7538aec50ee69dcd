"""One searched config key and its distribution, checked when a study config is read."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from mhtrain import ConfigError

TYPES = ("float", "int", "categorical")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def sample(self, rng: random.Random) -> Any:
        """A value drawn from the distribution (uniform, or log-uniform with `log`), on its steps."""
        if self.type == "categorical":
            return rng.choice(self.choices)
        if self.log:
            return self.clip(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self.clip(rng.uniform(self.low, self.high))

    def clip(self, value: float) -> Any:
        """`value` inside [low, high], on the nearest step, an int for an int range."""
        value = min(max(value, self.low), self.high)
        if self.step is not None or self.type == "int":
            step = self.step or 1
            value = min(self.low + round((value - self.low) / step) * step, self.high)
        return int(round(value)) if self.type == "int" else float(value)

    def perturb(self, value: Any, factor: float, rng: random.Random) -> Any:
        """PBT's explore of one value (as Ray's): a range's value times `factor`, clipped to the
        range (Ray does not clip); a choice's neighbour on either side."""
        if self.type == "categorical":
            i = self.choices.index(value) if value in self.choices else 0
            return self.choices[min(max(i + rng.choice((-1, 1)), 0), len(self.choices) - 1)]
        return self.clip(value * factor)

    def grid(self) -> list:
        """The values a grid search tries: the choices, or every step of a stepped range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise ConfigError(f"search_space.{self.key}: a grid search needs `step` or `choices`")
        step = self.step or 1
        n = int(round((self.high - self.low) / step))
        return [self.low + i * step for i in range(n + 1)]


def parse_param(key: str, spec: Mapping) -> Param:
    where = f"search_space.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}={spec!r}: must be a mapping like {{type: float, low: 0, high: 1}}")
    unknown = sorted(set(spec) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known: {', '.join(PARAM_KEYS)}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type={kind!r}: must be one of {', '.join(TYPES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty `choices` list")
        return Param(key, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
    if low is None or high is None:
        raise ConfigError(f"{where}: {kind} needs `low` and `high`")
    if low >= high:
        raise ConfigError(f"{where}: low={low} >= high={high}; the range is empty or inverted")
    if log and low <= 0:
        raise ConfigError(f"{where}: log=true needs low > 0 (got low={low})")
    if log and step is not None:
        raise ConfigError(f"{where}: `step` and `log` cannot be combined")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step={step} must be > 0")
    return Param(key, kind, float(low), float(high), log, step)


def stored(p: Param) -> dict[str, Any]:
    """The distribution as stored on a study (JSON values): every bound kept, `low: 0.0`
    included; `log` and `step` only when set."""
    if p.type == "categorical":
        return {"type": p.type, "choices": list(p.choices or ())}
    return {"type": p.type, "low": p.low, "high": p.high, **({"log": True} if p.log else {}),
            **({} if p.step is None else {"step": p.step})}
