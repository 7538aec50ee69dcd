"""The samplers a study may name, in one registry: names for validation, factories for the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna

from mhtrain.study.params import Param

Factory = Callable[[Sequence[Param], int, int], optuna.samplers.BaseSampler]


def _tpe(space: Sequence[Param], n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: processes sharing a study see each other's running trials
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(2, n_trials // 3)))


SAMPLERS: dict[str, Factory] = {
    "tpe": _tpe,
    "random": lambda space, n_trials, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda space, n_trials, seed: optuna.samplers.GridSampler({p.key: p.grid() for p in space},
                                                                      seed=seed),
}


def make_sampler(name: str, space: Sequence[Param], n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](space, n_trials, seed)
