"""Study configs (`conf/study/<name>.yaml`) and their search spaces, validated when loaded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR, check, compose, heads_of
from mhtrain.study.pruners import NAMES as PRUNER_NAMES
from mhtrain.study.pruners import PrunerSpec, build_pruner, parse_pruner
from mhtrain.study.samplers import SAMPLERS as SAMPLER_REGISTRY

TYPES = ("float", "int", "categorical")
SAMPLERS = tuple(SAMPLER_REGISTRY)
PRUNERS = PRUNER_NAMES
KEYS = ("name", "experiment", "metric", "direction", "n_trials", "seed", "sampler", "pruner",
        "search_space", "overrides", "population")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
_ABSENT = object()


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


@dataclass
class StudyConfig:
    """What a study searches, over which experiment, with which sampler and pruner."""

    name: str
    experiment: str
    metric: str
    direction: str
    n_trials: int
    seed: int
    sampler: str
    pruner: PrunerSpec
    search_space: list[Param]
    overrides: list[str] = field(default_factory=list)
    population: int | str = "auto"
    keep_checkpoints: str = "none"  # how a run stores its trials' weights, not what it searches
    max_epochs: int = 1  # the experiment's, with the study's overrides: a pruner's max resource

    def to_dict(self) -> dict[str, Any]:
        """As stored on the study (JSON values), so a resumed run can be compared with it."""
        return json.loads(json.dumps({
            "name": self.name, "experiment": self.experiment, "metric": self.metric,
            "direction": self.direction, "n_trials": self.n_trials, "seed": self.seed,
            "sampler": self.sampler, "pruner": self.pruner.to_dict(), "overrides": self.overrides,
            "search_space": {p.key: {k: v for k, v in vars(p).items()
                                     if k != "key" and v not in (None, False)}
                             for p in self.search_space}}))


def base_config(study: StudyConfig) -> DictConfig:
    """The experiment with the study's fixed overrides: what every trial starts from."""
    return compose(study.experiment, study.overrides)


def load(config: str, **changes: Any) -> StudyConfig:
    """Read `conf/study/<name>.yaml`, apply CLI changes (None means keep), and validate it all
    against the composed experiment, so a bad study fails before its first trial."""
    path = CONF_DIR / "study" / f"{config}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no study config {path.name}; known studies: {', '.join(known)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path.name} has unknown keys {unknown}; known: {', '.join(KEYS)}")
    if not isinstance(raw.get("overrides") or [], list):
        raise ConfigError(f"{path.name}: overrides must be a list, e.g. [data.train_subset=10000]; "
                          f"got {raw['overrides']!r}")
    raw.update({k: v for k, v in changes.items() if v is not None})
    if not str(raw.get("name", config)).strip():
        raise ConfigError("study name is empty; pass --study-name NAME or leave it out")
    if changes.get("experiment") and not changes.get("metric"):
        raw["metric"] = None  # the metric follows a replaced experiment
    raw["overrides"] = [*raw.get("overrides", []), *(changes.get("extra_overrides") or [])]
    raw.pop("extra_overrides", None)

    if raw.get("sampler", SAMPLERS[0]) not in SAMPLERS:
        raise ConfigError(f"sampler={raw['sampler']!r}: must be one of {', '.join(SAMPLERS)}")
    for knob in ("n_trials", "seed"):
        value = raw.get(knob, 1)
        if not isinstance(value, int) or isinstance(value, bool) or (knob == "n_trials" and value < 1):
            bound = " >= 1" if knob == "n_trials" else ""
            raise ConfigError(f"{knob}={value!r}: must be an integer{bound}")
    study = StudyConfig(
        name=raw.get("name", config), experiment=raw["experiment"], metric=raw.get("metric") or "",
        direction=raw.get("direction") or "", n_trials=int(raw.get("n_trials", 20)),
        seed=int(raw.get("seed", 0)), sampler=raw.get("sampler", "tpe"),
        pruner=parse_pruner(raw.get("pruner")),
        search_space=[parse_param(k, v) for k, v in (raw.get("search_space") or {}).items()],
        overrides=list(raw["overrides"]),
        population=raw.get("population", "auto"),
    )
    population = study.population
    if population != "auto" and (not isinstance(population, int) or isinstance(population, bool)
                                 or population < 1):
        raise ConfigError(f"population={population!r}: must be auto or an integer >= 1")
    if study.sampler == "grid":
        for p in study.search_space:
            p.grid()  # a grid needs every range stepped: refused here, before any storage
    if not study.search_space:
        raise ConfigError(f"study {config}: search_space is empty")
    cfg = base_config(study)
    study.max_epochs = cfg.trainer.max_epochs
    build_pruner(study.pruner, study.max_epochs)  # its resources must fit the epochs
    study.metric = study.metric or cfg.optimized_metric
    cfg.optimized_metric = study.metric
    check(cfg)  # the study's metric must be one the model logs
    study.direction = study.direction or ("minimize" if study.metric.endswith("loss") else "maximize")
    if study.direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction={study.direction!r}: must be maximize or minimize")
    # a head's loss weight may be searched before any config sets it (missing weights are 1.0)
    weights = {f"model.loss_weights.{h}" for h in heads_of(cfg)}
    for p in study.search_space:
        if p.key.startswith("model.loss_weights.") and min(p.choices or [p.low]) < 0:
            raise ConfigError(f"search_space.{p.key} reaches below 0; loss weights must be >= 0")
        if OmegaConf.select(cfg, p.key, default=_ABSENT) is _ABSENT and p.key not in weights:
            raise ConfigError(
                f"search_space key {p.key} does not exist in experiment {study.experiment}; "
                "check the spelling against `python -m mhtrain.train --cfg job`")
    return study
