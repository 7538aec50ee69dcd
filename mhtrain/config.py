"""Compose and check configs: one DictConfig per run, rejected before any epoch if it can't work."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mhtrain import CONF_DIR, ConfigError, DataError, quiet, tracking
from mhtrain.contract import check_loss_weights, check_weighting, metric_names


def compose(experiment: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m mhtrain.train experiment=<experiment> <overrides>` would run, checked
    with its model and Trainer built once."""
    args = ([f"experiment={experiment}"] if experiment else []) + list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=args)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    check(cfg, build=True)
    return cfg


def _data_class(cfg: DictConfig) -> type:
    return get_class(cfg.data._target_)


def heads_of(cfg: DictConfig) -> dict[str, int]:
    """Head name -> class count as the data config declares it (no images are read)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {name: h.classes for name, h in _data_class(cfg).heads_from_config(data).items()}


def input_shape_of(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, height, width) of the data's images, from its config or metadata."""
    return _data_class(cfg).shape_from_config(OmegaConf.to_container(cfg.data, resolve=True))


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a config group; an entry set to null is switched off."""
    return [instantiate(c) for c in (group or {}).values() if c is not None]


def build_model(cfg: DictConfig) -> Any:
    """The model config instantiated for the data: heads and input shape come from the data."""
    return instantiate(cfg.model, heads=heads_of(cfg), input_shape=input_shape_of(cfg))


# knob -> (lowest value, may it be absent or null): integers checked before any data is read.
# Lightning takes `accumulate_grad_batches=0` and divides by it in the first epoch.
KNOBS = {
    "seed": (None, False),
    "trainer.max_epochs": (1, False),
    "trainer.min_epochs": (0, False),
    "trainer.check_val_every_n_epoch": (1, False),
    "trainer.accumulate_grad_batches": (1, True),
    "callbacks.early_stopping.patience": (0, True),  # null: that callback is switched off
}


def check_knobs(cfg: DictConfig) -> None:
    """Types and ranges of the knobs a user sets on the command line, named with the fix."""
    for key, (low, optional) in KNOBS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
            bound = f" >= {low}" if low is not None else ""
            raise ConfigError(f"{key}={value!r}: must be an integer{bound}")


MONITORS = ("callbacks.early_stopping.monitor", "callbacks.model_checkpoint.monitor",
            "model.scheduler_monitor")


def check_monitors(cfg: DictConfig, heads: list[str]) -> None:
    """What a callback or the scheduler watches must be logged, and validation must run when
    they wait for its metrics. Lightning finds out only at the end of the first epoch, once per
    trial: a monitored metric nobody logs, a plateau scheduler stepping on a val metric in an
    epoch that did not validate; and with no validation at all no val metric (the study's
    objective, `val/acc_best`) ever exists."""
    logged = metric_names(heads)
    for key in MONITORS:
        monitor = OmegaConf.select(cfg, key, default=None)
        if key == "model.scheduler_monitor" and cfg.model.get("scheduler") is None:
            continue
        if monitor is not None and monitor not in logged:
            raise ConfigError(f"{key}={monitor} is not logged by a model with heads {heads}; "
                              f"choose one of {metric_names(heads, ('val',))}")
    every, epochs = cfg.trainer.check_val_every_n_epoch, cfg.trainer.max_epochs
    if every > epochs:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: no "
                          "epoch would validate; set check_val_every_n_epoch <= max_epochs")
    monitor = cfg.model.get("scheduler_monitor", "val/loss")
    if every > 1 and cfg.model.get("scheduler") is not None and str(monitor).startswith("val/"):
        raise ConfigError(f"trainer.check_val_every_n_epoch={every}: model.scheduler steps on {monitor} "
                          "after every epoch; set trainer.check_val_every_n_epoch=1 or model.scheduler=null")


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer on one dummy parameter: torch itself judges lr, betas, weight decay."""
    import torch

    try:
        instantiate(cfg.model.optimizer)(params=[torch.zeros(1, requires_grad=True)])
    except Exception as e:  # noqa: BLE001 - whatever torch says, it is a config problem
        reason = str(e.__cause__ or e).splitlines()[0]
        args = {k: v for k, v in cfg.model.optimizer.items() if not k.startswith("_")}
        raise ConfigError(f"model.optimizer {args} cannot build: {reason}") from None


def check_data(cfg: DictConfig) -> None:
    """Construct the datamodule (it checks its knobs; no images are read)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("_target_")
    try:
        _data_class(cfg)(**data)
    except TypeError as e:
        raise ConfigError(f"data: {e}") from None


def prepare_data(cfg: DictConfig) -> int:
    """Make the training data present and readable now (acquiring it if need be), so a study
    fails in one line before it writes anything, not inside its first trial. Returns the images
    training may draw from (the training split less the validation set); a `data.train_subset`
    beyond them is refused rather than quietly cut."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    n = len(datamodule.load("train")[0])
    datamodule.split_indices(n)  # refuses a validation set or a subset the data cannot give
    return n - datamodule.val_size


def check_builds(cfg: DictConfig) -> None:
    """Build the model and the Trainer once, as `fit` would, so whatever torch or Lightning
    refuses (a dropout of 1.5, three devices on a CPU, an unknown accelerator) is one line now,
    not an error in the first trial. Nothing is written: no logger, no fit."""
    quiet()
    for what, make in (("model", lambda: build_model(cfg)),
                       ("trainer", lambda: instantiate(cfg.trainer, logger=False,
                                                       callbacks=instantiate_all(cfg.get("callbacks"))))):
        try:
            make()
        except (ConfigError, DataError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever torch or Lightning says, it is the config
            reason = " ".join(str(e.__cause__ or e).split())[:300]
            raise ConfigError(f"{what} cannot be built from this config: {reason}") from None


LIGHTNING_CKPT = ("best", "last", "hpc", "registry")  # ckpt_path words Lightning resolves itself


def check_checkpoint(cfg: DictConfig) -> None:
    """A checkpoint to go on from is data someone else may have written: it must load as tensors
    and plain containers only (`weights_only=True`, as `fit` loads it), so a tampered one is one
    line now rather than a traceback, or code run, inside the fit."""
    path = cfg.get("ckpt_path")
    if not path or str(path) in LIGHTNING_CKPT:
        return
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path}: no such file")
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        asked = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise DataError(f"ckpt_path={path}: refused, not a checkpoint of plain tensors"
                        + (f"; it asks to run {asked.group(1)}" if asked else "")) from None
    except Exception as e:  # noqa: BLE001 - a damaged file, whatever torch says about it
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(f"ckpt_path={path}: not a readable checkpoint ({reason})") from None


def check(cfg: DictConfig, build: bool = False) -> None:
    """Everything that can be known wrong without training: knobs, data settings, optimizer,
    heads, weights, the target metric; with `build`, the model and Trainer themselves (done once
    per composed config, not per trial)."""
    check_knobs(cfg)
    check_checkpoint(cfg)
    check_data(cfg)
    check_optimizer(cfg)
    heads = list(heads_of(cfg))
    check_monitors(cfg, heads)
    check_loss_weights(heads, cfg.model.get("loss_weights") or {})
    check_weighting(cfg.model.get("weighting", "fixed"))
    unknown = sorted(set(cfg.model.get("criteria") or {}) - set(heads))
    if unknown:
        raise ConfigError(f"model.criteria has {unknown} but the heads are {heads}")
    metric, logged = cfg.get("optimized_metric"), metric_names(heads, ("val",))
    if metric and metric not in logged:
        raise ConfigError(f"optimized_metric={metric} is not logged by a model with heads {heads}; "
                          f"choose one of {logged}")
    if build:
        check_builds(cfg)
        tracking.check(cfg)  # an MLflow server that does not answer: one line, before any work
