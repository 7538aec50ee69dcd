"""The objective: one trial = one composed config trained by `fit`, pruned epoch by epoch."""

from __future__ import annotations

import os
import socket

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback

from mhtrain.config import compose
from mhtrain.study.space import StudyConfig
from mhtrain.train import fit

# How a trial runs, not what it trains: never the test split, no checkpoints, no epoch bars.
SEARCH_MODE = ["test=false", "callbacks.model_checkpoint=null", "trainer.enable_progress_bar=false"]


class PruningCallback(Callback):
    """Reports `metric` to the trial after each validation epoch; stops training cleanly when
    the pruner says so (the objective then raises TrialPruned, after `fit` has returned)."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.metric]), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True


def owner() -> tuple[str, int]:
    """(host, pid) of this worker, recorded on each trial it runs."""
    return socket.gethostname(), os.getpid()


def trial_overrides(study: StudyConfig, trial: optuna.Trial) -> list[str]:
    """Everything that defines what the trial trains: re-running these reproduces it."""
    suggested = [f"++{p.key}={p.suggest(trial)}" for p in study.search_space]
    return [*study.overrides, *suggested, f"seed={study.seed + trial.number}",
            f"optimized_metric={study.metric}"]


def objective(study: StudyConfig, trial: optuna.Trial) -> float:
    """Train the trial's configuration; return the best `study.metric` over its epochs."""
    overrides = trial_overrides(study, trial)
    host, pid = owner()
    trial.set_user_attr("owner", {"host": host, "pid": pid})
    trial.set_user_attr("experiment", study.experiment)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("seed", study.seed + trial.number)
    output_dir = f"paths.output_dir=runs/studies/{study.name}/trial_{trial.number:04d}"
    cfg = compose(study.experiment, [*overrides, *SEARCH_MODE, output_dir])
    pruning = PruningCallback(trial, study.metric)
    result = fit(cfg, callbacks=[pruning])
    for key, value in result["best"].items():
        if key.endswith("_acc") or key == study.metric:
            trial.set_user_attr(f"best_{key}", value)
    trial.set_user_attr("epochs", result["epochs"])
    trial.set_user_attr("seconds", round(result["seconds"], 2))
    trial.set_user_attr("params", result["params"])
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    return result["best"][study.metric]
