"""Run a population: a Trainer drives a PopulationModule (torch and Lightning only: bare machines)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain.data.datamodule import TensorDataModule
from mhtrain.pbt import Pbt
from mhtrain.population.check import trainer_args as checked_trainer_args
from mhtrain.population.members import MemberSource
from mhtrain.population.module import PopulationModule

# runs until no member is left, logs nothing itself (members have their loggers), keeps no checkpoints
POPULATION_TRAINER: dict[str, Any] = {
    "max_epochs": -1, "min_epochs": None, "logger": False, "enable_checkpointing": False,
    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
}


def train_population(datamodule: TensorDataModule, source: MemberSource, k: int,
                     trainer_args: Mapping[str, Any] | None = None,
                     callbacks: Sequence[Callback] = (), pbt: Pbt | None = None) -> int:
    """Train `source`'s members, up to `k` at once, on the solo runs' `trainer_args` (with `pbt`,
    exploiting and exploring at epoch boundaries); returns how many."""
    if k < 1:
        raise ValueError(f"k={k}: a population has at least one member")
    args = {**checked_trainer_args(trainer_args or {}), **POPULATION_TRAINER}
    if not args.get("deterministic") and args.get("benchmark") is None:
        args["benchmark"] = True  # cuDNN's autotuner (CUDA only): step shapes repeat all epoch
    first = source.next(k)
    if not first:
        return 0
    module = PopulationModule(datamodule, source, k, first, pbt)
    benchmark = torch.backends.cudnn.benchmark
    try:  # the Trainer sets cuDNN's global flag; the solo runs after this one get theirs back
        with warnings.catch_warnings():  # no optimizer for Lightning: the stack's Adam is manual
            warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
            L.Trainer(**args, callbacks=list(callbacks)).fit(module)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return module.admitted
