"""Run a population: one Lightning Trainer drives a PopulationModule until its supplier has no
more members. Needs torch and Lightning only (no Hydra, no Optuna), so a benchmark can drive it
on a machine that has nothing else; `mhtrain.population.fit` builds members from configs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mhtrain.data.datamodule import TensorDataModule
from mhtrain.population.members import MemberSource
from mhtrain.population.module import PopulationModule

# the population's Trainer runs until no member is left, logs nothing itself (each member has
# its own loggers) and keeps no checkpoints
POPULATION_TRAINER: dict[str, Any] = {
    "max_epochs": -1, "min_epochs": None, "logger": False, "enable_checkpointing": False,
    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
}
warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")


def train_population(datamodule: TensorDataModule, source: MemberSource, k: int,
                     trainer_args: Mapping[str, Any] | None = None,
                     callbacks: Sequence[Callback] = ()) -> int:
    """Train members from `source`, up to `k` at once, until it supplies no more; returns how
    many members were trained. `trainer_args` are the solo runs' Trainer arguments (device,
    precision, …); the ones a population sets itself (`POPULATION_TRAINER`) win."""
    if k < 1:
        raise ValueError(f"k={k}: a population has at least one member")
    first = source.next(k)
    if not first:
        return 0
    module = PopulationModule(datamodule, source, k, first)
    trainer = L.Trainer(**{**dict(trainer_args or {}), **POPULATION_TRAINER}, callbacks=list(callbacks))
    trainer.fit(module)
    return module.admitted
