"""Turn a study's best trial into `conf/experiment/best_<study>.yaml`, a plain experiment."""

from __future__ import annotations

from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mhtrain.config import CONF_DIR
from mhtrain.study.storage import open_storage


def best_trial_yaml(trial: optuna.trial.FrozenTrial, study_name: str) -> str:
    """The trial's experiment as defaults, its override list as plain config values."""
    body = OmegaConf.create({})
    for override in OverridesParser.create().parse_overrides(trial.user_attrs["overrides"]):
        OmegaConf.update(body, override.key_or_group, override.value(), force_add=True)
    header = (f"# @package _global_\n"
              f"# Best trial ({trial.number}, {trial.value:.6f}) of study {study_name}.\n"
              f"# python -m mhtrain.train experiment=best_{study_name}\n"
              f"defaults:\n  - {trial.user_attrs['experiment']}\n  - _self_\n\n")
    return header + OmegaConf.to_yaml(body)


def export(study_name: str, storage_url: str, conf_dir: Path = CONF_DIR) -> Path:
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    path = conf_dir / "experiment" / f"best_{study_name}.yaml"
    path.write_text(best_trial_yaml(study.best_trial, study_name))
    return path
