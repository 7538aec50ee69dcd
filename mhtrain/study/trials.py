"""A trial's config: the study's experiment and fixed overrides, composed once per process in
search mode, with the trial's suggested values and seed applied (what re-runs it is recorded)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mhtrain import ConfigError, tracking
from mhtrain.config import compose
from mhtrain.study import folders
from mhtrain.study.records import OUTPUT_ROOT as OUTPUT_ROOT  # re-exported: where it was defined
from mhtrain.study.records import within

if TYPE_CHECKING:
    from mhtrain.study.records import StudyConfig

# How a trial runs, not what it trains: never the test split, no checkpoints, no epoch bars.
SEARCH_MODE = ("test=false", "callbacks.model_checkpoint=null", "++trainer.enable_checkpointing=false",
               "trainer.enable_progress_bar=false")


@functools.lru_cache(maxsize=8)
def study_base(experiment: str, overrides: tuple[str, ...]) -> DictConfig:
    """The experiment with a study's fixed overrides, composed and checked (model and Trainer
    built) once per process: loading the study, its command line and its trials all start from
    it. Shared: callers that change it take a copy (`with_values` does)."""
    return compose(experiment, overrides)


@functools.lru_cache(maxsize=8)
def search_base(experiment: str, overrides: tuple[str, ...]) -> DictConfig:
    """What every trial's config starts from: the study's base in search mode (Hydra's compose
    is most of a trial's start-up, so it is not composed again)."""
    return with_values(study_base(experiment, overrides), SEARCH_MODE)


_parser = functools.cache(OverridesParser.create)  # builds a grammar: once per process, not per trial


def with_values(base: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A copy of `base` with value overrides (`key=v`, `++key=v`) applied as Hydra's compose
    applies them: the same parser gives the same typed values; `fit` then checks the result."""
    cfg = copy.deepcopy(base)
    try:
        for o in _parser().parse_overrides(list(overrides)):
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    return cfg


def suggested(study: StudyConfig, trial: optuna.Trial) -> dict[str, object]:
    """The trial's values of the study's search space. A value enqueued into the storage (warm
    start, a retry, anyone with the storage) is used only inside its local distribution: Optuna
    would only warn and train it."""
    values = {p.key: p.suggest(trial) for p in study.search_space}
    for p in study.search_space:
        if why := within(p, values[p.key]):
            raise ConfigError(f"study {study.name}, trial {trial.number}: {p.key}={values[p.key]!r} refused "
                              f"({why}: the local search space of study {study.name})")
    return values


def trial_values(study: StudyConfig, trial: optuna.Trial) -> list[str]:
    """What differs from trial to trial: the suggested values, the seed, the metric."""
    values = [f"++{key}={value}" for key, value in suggested(study, trial).items()]
    return [*values, f"seed={study.seed + trial.number}", f"optimized_metric={study.metric}"]


def trial_config(study: StudyConfig, trial: optuna.Trial) -> DictConfig:
    """Suggest the trial's values, record on it all that re-runs it, and return its search-mode
    config, writing to the trial's own folder inside its study's folder (as this process first read
    and checked it: another process that changes the record changes nothing here)."""
    values = trial_values(study, trial)
    output_dir = folders.study_folder(trial.study) / f"trial_{trial.number:04d}"  # read once, checked
    keeping = ["++trainer.enable_checkpointing=true"] if study.keep_checkpoints != "none" else []
    cfg = with_values(search_base(study.experiment, study.overrides),
                      [*values, f"paths.output_dir={output_dir}", *keeping])
    curves = tracking.for_trial(cfg, study.name, trial.number, trial.params)  # its own runs
    for key, value in (("experiment", study.experiment), ("overrides", [*study.overrides, *values]),
                       ("seed", study.seed + trial.number), ("output_dir", str(output_dir)),
                       ("max_epochs", cfg.trainer.max_epochs), (tracking.TRACKING, curves)):
        if value or key != tracking.TRACKING:
            trial.set_user_attr(key, value)
    return cfg
