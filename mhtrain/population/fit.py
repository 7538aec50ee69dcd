"""Populations from configs: members built as `mhtrain.train.fit` builds solo runs, and `fit_population`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping
from omegaconf import DictConfig, OmegaConf

from mhtrain import ConfigError
from mhtrain.config import build_model
from mhtrain.pbt import Pbt
from mhtrain.population.check import check_config, check_member
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.trainer import train_population


def member_from_config(cfg: DictConfig, key: Any, base: DictConfig | None = None) -> Member:
    """The member `cfg` describes, built as `fit(cfg)` builds its solo run; checked against `base`."""
    if base is not None:
        check_member(base, cfg)
    stoppers = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if any(not isinstance(s, EarlyStopping) for s in stoppers) or len(stoppers) > 1:
        raise ConfigError("a population member runs one early_stopping callback and nothing else; "
                          "set the others to null or use population=1")
    # its solo run's initial weights; every global RNG stream is left as it was for the others
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)  # not torch.manual_seed: that reseeds CUDA
        model = build_model(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    data_seed = cfg.data.get("seed")
    return Member(key=key, model=model, seed=cfg.seed if data_seed is None else data_seed,
                  max_epochs=cfg.trainer.max_epochs, min_epochs=cfg.trainer.get("min_epochs") or 0,
                  early_stopping=stoppers[0] if stoppers else None, loggers=loggers,
                  output_dir=str(output_dir))


def fit_population(base: DictConfig, source: MemberSource, k: int,
                   callbacks: Sequence[Callback] = (), pbt: Pbt | None = None) -> int:
    """Train `source`'s members, up to `k` at once, on `base`'s data and Trainer settings (with
    population-based training when `pbt` is given)."""
    check_config(base, k=k)
    trainer_args = OmegaConf.to_container(base.trainer, resolve=True)
    return train_population(instantiate(base.data), source, k, trainer_args, callbacks, pbt)
