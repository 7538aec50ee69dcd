"""Turn a study's best trial into `conf/experiment/best_<study>.yaml`, a plain experiment that
trains exactly what the trial trained: group choices (`data=…`) stay group choices."""

from __future__ import annotations

from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR, compose
from mhtrain.study.checkpoints import hand_over
from mhtrain.study.storage import load_existing


def best_trial_yaml(trial: optuna.trial.FrozenTrial, study_name: str, conf_dir: Path = CONF_DIR) -> str:
    """The trial's experiment and group choices as defaults, its other overrides as values."""
    body = OmegaConf.create({})
    groups = []
    for override in OverridesParser.create().parse_overrides(trial.user_attrs["overrides"]):
        key = override.key_or_group
        if (conf_dir / key).is_dir() and key != "experiment":
            groups.append(f"  - override /{key}: {override.value()}\n")
        else:
            OmegaConf.update(body, key, override.value(), force_add=True)
    header = (f"# @package _global_\n"
              f"# Best trial ({trial.number}, {trial.value:.6f}) of study {study_name}.\n"
              f"# python -m mhtrain.train experiment=best_{study_name}\n"
              f"defaults:\n  - {trial.user_attrs['experiment']}\n{''.join(groups)}  - _self_\n\n")
    return header + OmegaConf.to_yaml(body)


def export(study_name: str, storage_url: str, conf_dir: Path = CONF_DIR) -> Path:
    """Write the experiment file and check that it composes (a file that cannot train is removed)."""
    study = load_existing(study_name, storage_url)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study {study_name} has no completed trial yet; run it first") from None
    path = conf_dir / "experiment" / f"best_{study_name}.yaml"
    path.write_text(best_trial_yaml(best, study_name, conf_dir))
    if conf_dir == CONF_DIR:
        try:
            compose(f"best_{study_name}")
        except ConfigError:
            path.unlink()
            raise
    return path


def export_checkpoint(study_name: str, storage_url: str, dest: Path) -> Path | None:
    """Copy the best trial's kept checkpoint to `dest`; None if the study kept none for it."""
    study = load_existing(study_name, storage_url)
    return hand_over(study, study.best_trial, dest)
