"""Optuna's own Lightning example (`pytorch_lightning_simple.py`) wired to mhtrain's model and data:
a plain `study.optimize`, a Lightning Trainer per trial built as the example builds it, and
optuna-integration's `PyTorchLightningPruningCallback` reporting each validation to successive
halving (the reduction factor and rungs of mhtrain's `sha`). Run by bench/peers.py in an
environment with optuna-integration:

    python bench/peers_optuna.py '<RunSpec JSON>'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback
from peers_clock import BatchClock
from peers_common import METRIC, RunSpec, build, search_space, short


def objective_for(spec: RunSpec):  # noqa: ANN201 - Optuna's objective type
    space = search_space(spec.study)

    def objective(trial: optuna.Trial) -> float:
        values = {k: trial.suggest_float(short(k), p["low"], p["high"], log=p["log"])
                  for k, p in space.items()}
        _, datamodule, model = build(spec, values, spec.seed + trial.number)
        trainer = L.Trainer(logger=True, enable_checkpointing=False, max_epochs=spec.epochs,
                            accelerator="auto", devices=1, default_root_dir=spec.workdir,
                            callbacks=[BatchClock(spec.clock),
                                       PyTorchLightningPruningCallback(trial, monitor=METRIC)])
        trainer.logger.log_hyperparams(values)
        trainer.fit(model, datamodule=datamodule)
        return trainer.callback_metrics[METRIC].item()

    return objective


def main(spec: RunSpec) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4,
                                                      min_early_stopping_rate=0))
    study.optimize(objective_for(spec), n_trials=spec.n_trials)
    states = [t.state.name for t in study.trials]
    print("PEERS_RESULT " + json.dumps({"trials": len(states), "pruned": states.count("PRUNED"),
                                        "best": study.best_value}))


if __name__ == "__main__":
    Path(RunSpec.from_json(sys.argv[1]).workdir).mkdir(parents=True, exist_ok=True)
    main(RunSpec.from_json(sys.argv[1]))
