"""Compose and check configs: one DictConfig per run, rejected before any epoch if it can't work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mhtrain import ConfigError
from mhtrain.models.module import check_loss_weights, metric_names

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(experiment: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m mhtrain.train experiment=<experiment> <overrides>` would run."""
    args = ([f"experiment={experiment}"] if experiment else []) + list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=args)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    check(cfg)
    return cfg


def _data_class(cfg: DictConfig) -> type:
    from hydra.utils import get_class

    return get_class(cfg.data._target_)


def heads_of(cfg: DictConfig) -> dict[str, int]:
    """Head name -> class count as the data config declares it (no images are read)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {name: h.classes for name, h in _data_class(cfg).heads_from_config(data).items()}


def input_shape_of(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, height, width) of the data's images, from its config or metadata."""
    return _data_class(cfg).shape_from_config(OmegaConf.to_container(cfg.data, resolve=True))


def build_model(cfg: DictConfig) -> Any:
    """The model config instantiated for the data: heads and input shape come from the data."""
    from hydra.utils import instantiate

    return instantiate(cfg.model, heads=heads_of(cfg), input_shape=input_shape_of(cfg))


def check(cfg: DictConfig) -> None:
    """Everything that can be known wrong without training: heads, weights, the target metric."""
    heads = list(heads_of(cfg))
    check_loss_weights(heads, cfg.model.get("loss_weights") or {})
    unknown = sorted(set(cfg.model.get("criteria") or {}) - set(heads))
    if unknown:
        raise ConfigError(f"model.criteria has {unknown} but the heads are {heads}")
    metric = cfg.get("optimized_metric")
    if metric and metric not in metric_names(heads, ("val",)):
        raise ConfigError(
            f"optimized_metric={metric} is not logged by a model with heads {heads}; "
            f"choose one of {metric_names(heads, ('val',))}"
        )
