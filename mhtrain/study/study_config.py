"""Study configs (`conf/study/<name>.yaml`): read, merged with the command line, checked against
the composed experiment, resolved for this device (population size) and frozen, in that order,
before anything runs. Nothing changes a `StudyConfig` afterwards."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR, check, heads_of
from mhtrain.pbt import check as check_pbt
from mhtrain.pbt import parse_pbt
from mhtrain.study.checkpoints import KEEP
from mhtrain.study.params import Param, parse_param
from mhtrain.study.pruners import build_pruner, parse_pruner
from mhtrain.study.records import StudyConfig
from mhtrain.study.samplers import SAMPLERS as SAMPLER_REGISTRY
from mhtrain.study.trials import search_base, study_base

SAMPLERS = tuple(SAMPLER_REGISTRY)
# every key a study config may hold, with its default when the file leaves it out
DEFAULTS: dict[str, Any] = {"name": None, "experiment": None, "metric": None, "direction": None,
                            "n_trials": 20, "seed": 0, "sampler": "tpe", "pruner": None,
                            "search_space": {}, "overrides": [], "population": "auto", "pbt": None}
_ABSENT = object()


def base_config(study: StudyConfig) -> DictConfig:
    """The experiment with the study's fixed overrides: what every trial starts from (a copy of
    the one composed when the study was loaded)."""
    return copy.deepcopy(study_base(study.experiment, study.overrides))


def _read(config: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The file's values with the command line's `changes` on top (None means keep)."""
    path = CONF_DIR / "study" / f"{config}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no study config {path.name}; known studies: {', '.join(known)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{path.name} has unknown keys {unknown}; known: {', '.join(DEFAULTS)}")
    if not isinstance(raw.get("overrides") or [], list):
        raise ConfigError(f"{path.name}: overrides must be a list, e.g. [data.train_subset=10000]; "
                          f"got {raw['overrides']!r}")
    raw = {**DEFAULTS, "name": config, **{k: v for k, v in raw.items() if v is not None}}
    extra = changes.pop("extra_overrides", None) or []
    merged = {**raw, **{k: v for k, v in changes.items() if v is not None}}
    if changes.get("experiment") and not changes.get("metric"):
        merged["metric"] = None  # the metric follows a replaced experiment
    merged["overrides"] = [*raw["overrides"], *extra]
    return merged


def _check_scalars(raw: dict[str, Any]) -> None:
    if not str(raw["name"]).strip():
        raise ConfigError("study name is empty; pass --study-name NAME or leave it out")
    if raw["sampler"] not in SAMPLERS:
        raise ConfigError(f"sampler={raw['sampler']!r}: must be one of {', '.join(SAMPLERS)}")
    for knob in ("n_trials", "seed"):
        value = raw[knob]
        if not isinstance(value, int) or isinstance(value, bool) or (knob == "n_trials" and value < 1):
            bound = " >= 1" if knob == "n_trials" else ""
            raise ConfigError(f"{knob}={value!r}: must be an integer{bound}")
    k = raw["population"]
    if k != "auto" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ConfigError(f"population={k!r}: must be auto or an integer >= 1")


def _check_space(space: tuple[Param, ...], cfg: DictConfig, raw: dict[str, Any]) -> None:
    if not space:
        raise ConfigError(f"study {raw['name']}: search_space is empty")
    if raw["sampler"] == "grid":
        for p in space:
            p.grid()  # a grid needs every range stepped: refused here, before any storage
    # a head's loss weight may be searched before any config sets it (missing weights are 1.0)
    weights = {f"model.loss_weights.{h}" for h in heads_of(cfg)}
    for p in space:
        if p.key.startswith("model.loss_weights.") and min(p.choices or [p.low]) < 0:
            raise ConfigError(f"search_space.{p.key} reaches below 0; loss weights must be >= 0")
        if OmegaConf.select(cfg, p.key, default=_ABSENT) is _ABSENT and p.key not in weights:
            raise ConfigError(f"search_space key {p.key} does not exist in experiment {raw['experiment']}; "
                              "check the spelling against `python -m mhtrain.train --cfg job`")


def load(config: str, keep_checkpoints: str = "none", **changes: Any) -> StudyConfig:
    """Read `conf/study/<config>.yaml`, apply the command line's `changes` (None means keep) and
    `extra_overrides`, check it all against the composed experiment, settle the population size
    for this device, and return it frozen: a bad study fails here, before its first trial."""
    raw = _read(config, changes)
    _check_scalars(raw)
    if keep_checkpoints not in KEEP:
        raise ConfigError(f"keep_checkpoints={keep_checkpoints!r}: must be one of {', '.join(KEEP)}")
    pruner = parse_pruner(raw["pruner"])
    space = tuple(parse_param(k, v) for k, v in (raw["search_space"] or {}).items())
    overrides = tuple(raw["overrides"])
    cfg = copy.deepcopy(study_base(raw["experiment"], overrides))
    metric = raw["metric"] or cfg.optimized_metric
    cfg.optimized_metric = metric
    check(cfg)  # the study's metric must be one the model logs
    direction = raw["direction"] or ("minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction={direction!r}: must be maximize or minimize")
    build_pruner(pruner, cfg.trainer.max_epochs)  # its resources must fit the epochs
    _check_space(space, cfg, raw)
    from mhtrain.population.check import population_size  # torch: only once the study is sound

    k, why = population_size(raw["population"], search_base(raw["experiment"], overrides),
                             [p.key for p in space], keep_checkpoints != "none")
    if k > 1 and pruner.report_every < 1:
        raise ConfigError(f"pruner.report_every={pruner.report_every:g} with a population of {k} ({why}): "
                          "members leave a population at epoch ends, so a sub-epoch report would "
                          "save nothing; pass --population 1 or set report_every: 1")
    pbt = None if raw["pbt"] in (None, False) else parse_pbt(raw["pbt"])
    if pbt is not None:
        check_pbt([p.key for p in space], cfg.model.get("scheduler"))
        if k < 2:
            raise ConfigError(f"pbt needs a population of at least 2 members, got {k} ({why}); "
                              "pass --population 4 (auto on a GPU)")
    return StudyConfig(name=raw["name"], experiment=raw["experiment"], metric=metric, direction=direction,
                       n_trials=raw["n_trials"], seed=raw["seed"], sampler=raw["sampler"], pruner=pruner,
                       search_space=space, overrides=overrides, max_epochs=cfg.trainer.max_epochs,
                       population=k, population_reason=why, keep_checkpoints=keep_checkpoints, pbt=pbt)
