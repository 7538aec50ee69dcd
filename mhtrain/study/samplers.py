"""The samplers a study may name, in one registry: names for validation, factories for the runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from mhtrain.study.space import StudyConfig


def _tpe(study: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: processes sharing a study see each other's running trials
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(2, study.n_trials // 3)))


def _grid(study: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler({p.key: p.grid() for p in study.search_space}, seed=seed)


SAMPLERS: dict[str, Callable[[StudyConfig, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda study, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": _grid,
}


def make_sampler(study: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[study.sampler](study, seed)
