"""Ray Tune 2.x as its Lightning guide wires it, training mhtrain's model and data: a function
trainable whose Trainer reports each validation through `TuneReportCheckpointCallback` (which also
saves a checkpoint there), driven either by `Tuner` + `OptunaSearch` (TPE) + `ASHAScheduler` (the
reduction factor and rungs of mhtrain's `sha`) or by `PopulationBasedTraining` (mhtrain's
`pbt_loss_weights` settings), where an exploit restarts a trial from another's checkpoint. Run by
bench/peers.py in an environment with `ray[tune]`:

    python bench/peers_ray.py '<RunSpec JSON>'      # extra: {"mode": "asha"|"pbt", "cpus_per_trial": 1}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from peers_clock import BatchClock
from peers_common import METRIC, RunSpec, build, search_space, short, study_config
from ray import tune
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

REPORTED = "digit_acc"  # Ray's name for val/digit_acc


class TimedReport(TuneReportCheckpointCallback):
    """Ray's callback, timed: when each report begins (the clock's next `epoch_start` says when
    training went on: Ray's report round trip with its checkpoint) and each checkpoint save's
    seconds. Nothing is written after the report itself: Ray may end the trial's process in it."""

    def __init__(self, clock: BatchClock) -> None:
        super().__init__({REPORTED: METRIC}, filename="checkpoint", on="validation_end")
        self.clock = clock

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        save = trainer.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            save(*args, **kwargs)
            self.clock._write(event="save", seconds=time.perf_counter() - start)

        trainer.save_checkpoint = timed_save

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.clock._write(event="report")
        super().on_validation_end(trainer, pl_module)


class RestoredHypers:
    """After Lightning restores a checkpoint (optimizer state included), the explored learning rate
    must be set again, or the exploit would train on with the copied member's."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __call__(self, trainer: Any) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lr


def trial_number(folder: str, trial_id: str) -> int:
    """The trial's number from 0 (trial seed = study seed + number, as in mhtrain and the Optuna
    example): a generated trial's id ends in it (`<run>_00003`); a searcher's trial has a bare id
    and its folder `<trainable>_<id>_<counter from 1>_<values>_<date>`."""
    suffix = trial_id.rsplit("_", 1)[-1]
    if "_" in trial_id and suffix.isdigit():
        return int(suffix)
    counter = folder.split(f"{trial_id}_", 1)[-1].split("_", 1)[0]
    return max(0, int(counter) - 1) if counter.isdigit() else 0


def trainable(spec: RunSpec):  # noqa: ANN201 - Ray's function-trainable type
    space = search_space(spec.study)

    def train_fn(config: dict[str, float]) -> None:
        import lightning as L
        from lightning.pytorch.callbacks import LambdaCallback
        from lightning.pytorch.loggers import CSVLogger

        context = tune.get_context()
        trial_id = context.get_trial_id()
        number = trial_number(Path(context.get_trial_dir()).name, trial_id)
        clock = BatchClock(spec.clock, tag=trial_id)
        clock._write(event="enter")
        values = {k: config[short(k)] for k in space}
        _, datamodule, model = build(spec, values, spec.seed + number)
        callbacks = [clock, TimedReport(clock)]
        lr = values.get("model.optimizer.lr")
        if lr is not None:
            callbacks.append(LambdaCallback(on_train_start=lambda trainer, _: RestoredHypers(lr)(trainer)))
        trainer = L.Trainer(max_epochs=spec.epochs, devices=1, accelerator="auto",
                            enable_progress_bar=False, logger=CSVLogger(save_dir=os.getcwd(), name=""),
                            callbacks=callbacks)
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            trainer.fit(model, datamodule=datamodule)
            return
        with checkpoint.as_directory() as folder:  # its own (a paused trial) or another's (an exploit)
            clock._write(event="restore", own=Path(context.get_trial_dir()).name in checkpoint.path)
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(Path(folder) / "checkpoint"))

    return train_fn


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {short(k): (tune.loguniform if p["log"] else tune.uniform)(p["low"], p["high"])
            for k, p in space.items()}


def main(spec: RunSpec) -> None:
    cpus = int(spec.extra.get("cpus_per_trial", 1))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    space = distributions(search_space(spec.study))
    if spec.extra.get("mode") == "pbt":
        pbt = study_config(spec.study)["pbt"]
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=pbt["interval"],
            quantile_fraction=pbt["quantile"], resample_probability=pbt["resample_probability"],
            perturbation_factors=tuple(pbt["perturbation_factors"]), hyperparam_mutations=space)
        tune_config = tune.TuneConfig(scheduler=scheduler, metric=REPORTED, mode="max",
                                      num_samples=spec.n_trials)
    else:
        searcher = OptunaSearch(metric=REPORTED, mode="max", seed=spec.seed)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs, grace_period=1,
                                  reduction_factor=4)
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric=REPORTED, mode="max",
                                      num_samples=spec.n_trials)
    tuner = tune.Tuner(tune.with_resources(trainable(spec), {"cpu": cpus}), param_space=space,
                       tune_config=tune_config,
                       run_config=tune.RunConfig(storage_path=str(Path(spec.workdir).resolve() / "ray"),
                                                 name="peers", verbose=0,
                                                 stop={"training_iteration": spec.epochs}))
    results = tuner.fit()
    df = results.get_dataframe()
    best = results.get_best_result(metric=REPORTED, mode="max", scope="all")
    print("PEERS_RESULT " + json.dumps({
        "trials": len(df), "errors": len(results.errors),
        "best": None if best.metrics_dataframe is None else float(best.metrics_dataframe[REPORTED].max())}))
    ray.shutdown()


if __name__ == "__main__":
    spec = RunSpec.from_json(sys.argv[1])
    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    main(spec)
