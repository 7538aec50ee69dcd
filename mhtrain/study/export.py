"""Turn a study's best trial into `conf/experiment/best_<study>.yaml`: the best values on the
study's experiment for a final training run. A search trains at a cheap fidelity (few epochs, a
subset); those overrides and the trial's seed are left out unless asked for (`as_searched`), and
the caller is told which. Group choices (`data=…`) stay group choices. What is written is only
what `untrusted.trial_record` passed: the study's own keys with scalar values."""

from __future__ import annotations

from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mhtrain import ConfigError, program
from mhtrain.config import CONF_DIR, compose
from mhtrain.study.checkpoints import hand_over
from mhtrain.study.confirm import ATTR, chosen_trial
from mhtrain.study.race import DEFAULT
from mhtrain.study.replay import is_pbt, replay_node, replayed
from mhtrain.study.storage import load_existing
from mhtrain.study.untrusted import trial_record

# what makes a search run cheap rather than what it trains: dropped from an export by default
FIDELITY = ("trainer.max_epochs", "trainer.min_epochs", "data.train_subset", "data.val_subset", "seed")


def fidelity_overrides(overrides: list[str]) -> list[str]:
    """The overrides that set a trial's search fidelity (and its seed)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.key_or_group.lstrip("+") in FIDELITY]


def best_trial_yaml(trial: optuna.trial.FrozenTrial, experiment: str, overrides: list[str],
                    study_name: str, conf_dir: Path = CONF_DIR, as_searched: bool = False,
                    replay: list[dict] | None = None) -> str:
    """The trial's experiment and group choices as defaults, its other (checked) overrides as
    values (without its fidelity and seed unless `as_searched`); with `replay`, the callback that
    retraces a PBT member's lineage from this trial's start."""
    body, groups = OmegaConf.create({}), []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not as_searched and key.lstrip("+") in FIDELITY:
            continue
        if (conf_dir / key).is_dir() and key != "experiment":
            groups.append(f"  - override /{key}: {override.value()}\n")
        else:
            OmegaConf.update(body, key, override.value(), force_add=True)
    if replay is not None:
        OmegaConf.update(body, "callbacks.pbt_replay", replay_node(replay), force_add=True)
    what = (f"Best trial ({trial.number}, {trial.value:.6f}) of study {study_name} "
            "(the confirmed choice if it ran --confirm)." if replay is None else
            f"Best member (trial {replay[-1]['trial']}) of PBT study {study_name}, retraced solo from "
            f"the start of trial {trial.number}, its lineage's first member, at the study's fidelity.")
    header = (f"# @package _global_\n# {what}\n"
              f"# python -m mhtrain.train experiment=best_{study_name}\n"
              f"defaults:\n  - {experiment}\n{''.join(groups)}  - _self_\n\n")
    return header + OmegaConf.to_yaml(body)


def export(study_name: str, storage_url: str, conf_dir: Path = CONF_DIR,
           as_searched: bool = False) -> tuple[Path, list[str]]:
    """Write the experiment file and check that it composes (a file that cannot train is
    removed); returns its path and the search-fidelity overrides it left out."""
    study = load_existing(study_name, storage_url)
    best, replay = replayed(study, chosen_trial(study))  # a PBT answer: its lineage, retraced solo
    as_searched = as_searched or replay is not None
    experiment, overrides = trial_record(study, best)  # refused here, before anything is written
    path = conf_dir / "experiment" / f"best_{study_name}.yaml"
    path.write_text(best_trial_yaml(best, experiment, overrides, study_name, conf_dir, as_searched, replay))
    if conf_dir == CONF_DIR:
        try:
            compose(f"best_{study_name}")
        except ConfigError:
            path.unlink()
            raise
    return path, [] if as_searched else fidelity_overrides(overrides)


def handover_lines(study_name: str, storage_url: str, path: Path, dropped: list[str],
                   checkpoint: Path | None) -> list[str]:
    """What export handed over, said plainly: which trial and the rule that chose it, the fidelity
    the written config trains at, and only hints that work for this study."""
    study = load_existing(study_name, storage_url)
    chosen, pbt = chosen_trial(study), is_pbt(study)
    confirmation = study.user_attrs.get(ATTR)
    rule = confirmation.get("rule") if isinstance(confirmation, dict) else None
    what = ("the experiment's default values" if chosen.user_attrs.get(DEFAULT) else
            f"trial {chosen.number}" + (" (a PBT member: its lineage's schedule)" if pbt else ""))
    why = (f"chosen by the race on fresh seeds: {str(rule)[:200]}" if rule else
           "the search's best (no --confirm race: its value carries the winner's curse; --confirm races "
           "the top on fresh seeds)")
    cfg = compose(f"best_{study_name}") if path.parent.parent == CONF_DIR else None
    fidelity = ""
    if cfg is not None:
        subset = cfg.data.get("train_subset")
        fidelity = (f"{cfg.trainer.max_epochs} epochs on "
                    + (f"{subset:,} training images" if subset else "the whole training split"))
    out = [f"wrote {path}: {what}, {why}"]
    if pbt:
        out.append(f"it replays the schedule at the search's fidelity ({fidelity}): the schedule's epochs "
                   "are the search's, so --as-searched changes nothing")
    else:
        left = f"; the search's {' '.join(dropped)} left out (--as-searched keeps them)" if dropped else ""
        out.append(f"it trains at {fidelity or 'the experiment’s own fidelity'}{left}")
    out.append(f"train it: {program()} -m mhtrain.train experiment=best_{study_name}")
    if checkpoint is not None:
        out.append(f"its weights: {checkpoint}; go on training from them: {program()} -m mhtrain.train "
                   f"experiment=best_{study_name} ckpt_path={checkpoint}")
    elif not pbt and not any(isinstance(t.user_attrs.get("population"), dict)  # stacked: keeps none
                             for t in study.get_trials(deepcopy=False)):
        out.append("no checkpoint kept for it (run the study with --keep-checkpoints best to keep one)")
    return out


def export_checkpoint(study_name: str, storage_url: str, dest: Path) -> Path | None:
    """Copy the best trial's kept checkpoint to `dest`; None if the study kept none for it."""
    study = load_existing(study_name, storage_url)
    return hand_over(study, chosen_trial(study), dest, storage_url)
