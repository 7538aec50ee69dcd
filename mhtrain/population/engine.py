"""Run a population: one Lightning Trainer drives a PopulationModule until its supplier has no
more members. Needs torch and Lightning only (no Hydra, no Optuna), so a benchmark can drive it
on a machine that has nothing else; `mhtrain.population.fit` builds members from configs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain.data.datamodule import TensorDataModule
from mhtrain.population.check import trainer_args as checked_trainer_args
from mhtrain.population.members import MemberSource
from mhtrain.population.module import PopulationModule

# the population's Trainer runs until no member is left, logs nothing itself (each member has
# its own loggers) and keeps no checkpoints
POPULATION_TRAINER: dict[str, Any] = {
    "max_epochs": -1, "min_epochs": None, "logger": False, "enable_checkpointing": False,
    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
}


def population_trainer_args(trainer_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Trainer arguments a population runs with: the solo runs' (checked, one device), the
    population's own, and cuDNN's autotuner on (a population's step shapes repeat for a whole
    epoch), unless the runs ask to be deterministic."""
    args = {**checked_trainer_args(trainer_args or {}), **POPULATION_TRAINER}
    if not args.get("deterministic") and args.get("benchmark") is None:
        args["benchmark"] = True  # only CUDA reads it
    return args


def train_population(datamodule: TensorDataModule, source: MemberSource, k: int,
                     trainer_args: Mapping[str, Any] | None = None,
                     callbacks: Sequence[Callback] = ()) -> int:
    """Train members from `source`, up to `k` at once, until it supplies no more; returns how
    many members were trained. `trainer_args` are the solo runs' Trainer arguments (device,
    precision, …); the ones a population sets itself (`POPULATION_TRAINER`) win."""
    if k < 1:
        raise ValueError(f"k={k}: a population has at least one member")
    args = population_trainer_args(trainer_args)
    first = source.next(k)
    if not first:
        return 0
    module = PopulationModule(datamodule, source, k, first)
    benchmark = torch.backends.cudnn.benchmark
    try:  # the Trainer sets cuDNN's global flag; the solo runs after this one get theirs back
        with warnings.catch_warnings():  # no optimizer for Lightning: the stack's Adam is manual
            warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
            L.Trainer(**args, callbacks=list(callbacks)).fit(module)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return module.admitted
