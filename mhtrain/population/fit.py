"""Populations from configs: which keys may differ between members, a member built from its
config exactly as `mhtrain.train.fit` builds a solo run, and `fit_population`."""

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
from mhtrain.population.engine import train_population
from mhtrain.population.members import Member, MemberSource
from mhtrain.population.optim import adam_args

# What may differ between members: values that leave tensor shapes and the batch loop alone
# (a key ending in "." covers everything under it). Anything else is the same for all members.
VARYING = ("seed", "model.optimizer.", "model.loss_weights.", "model.net.dropout",
           "model.scheduler.", "model.scheduler_monitor", "callbacks.early_stopping.",
           "trainer.max_epochs", "trainer.min_epochs", "optimized_metric", "paths.output_dir",
           "logger.", "tags", "task_name")
# Trainer settings a population cannot honour: it validates every epoch and steps every batch
TRAINER_FIXED = {"check_val_every_n_epoch": (1,), "val_check_interval": (None, 1, 1.0),
                 "accumulate_grad_batches": (None, 1), "gradient_clip_val": (None, 0, 0.0),
                 "fast_dev_run": (None, False, 0),
                 "precision": (None, 32, "32", "32-true", "bf16-mixed")}


def vectorizable(key: str) -> bool:
    """Whether config `key` may take a different value in each member of one population."""
    return any(key == v.rstrip(".") or (v.endswith(".") and key.startswith(v)) for v in VARYING)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_member(base: DictConfig, cfg: DictConfig) -> None:
    """Refuse a member whose config differs from the population's in a key that must not vary
    (compared unresolved, so `${paths.output_dir}` and friends compare equal)."""
    ours = _flat(OmegaConf.to_container(base, resolve=False))
    theirs = _flat(OmegaConf.to_container(cfg, resolve=False))
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key) and not vectorizable(key):
            raise ConfigError(
                f"{key} differs between members ({ours.get(key)!r} vs {theirs.get(key)!r}); it "
                "changes shapes or the training loop, so it cannot vary inside a population: "
                "use population=1")


def check_base(base: DictConfig) -> None:
    """Refuse, before any work, what a population cannot train the way a solo run would."""
    for key, allowed in TRAINER_FIXED.items():
        value = base.trainer.get(key)
        if value not in allowed:
            raise ConfigError(f"trainer.{key}={value!r}: a population validates every epoch and "
                              "steps every batch in full precision; unset it or use population=1")
    if base.model.get("weighting", "fixed") != "fixed":
        raise ConfigError(f"model.weighting={base.model.weighting}: a population trains fixed "
                          "loss weights; use population=1")
    for name, c in (base.get("callbacks") or {}).items():
        if c is not None and name != "early_stopping":
            raise ConfigError(f"callbacks.{name}: a population member runs early stopping only "
                              f"(no checkpoints); set callbacks.{name}=null or use population=1")
    adam_args(instantiate(base.model.optimizer)(params=[torch.zeros(1, requires_grad=True)]))


def member_from_config(cfg: DictConfig, key: Any, base: DictConfig | None = None) -> Member:
    """The member `cfg` describes, built as `fit(cfg)` builds its solo run: initial weights from
    `torch.manual_seed(cfg.seed)`, its own early stopping and loggers, `config.yaml` saved."""
    if base is not None:
        check_member(base, cfg)
    stoppers = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if any(not isinstance(s, EarlyStopping) for s in stoppers) or len(stoppers) > 1:
        raise ConfigError("a population member runs one early_stopping callback and nothing else; "
                          "set the others to null or use population=1")
    with torch.random.fork_rng(devices=[]):  # the members already training keep their RNG stream
        torch.manual_seed(cfg.seed)
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
                   callbacks: Sequence[Callback] = ()) -> int:
    """Train the members `source` supplies (built with `member_from_config`), up to `k` at once,
    on `base`'s data and Trainer settings; returns how many were trained."""
    check_base(base)
    trainer_args = OmegaConf.to_container(base.trainer, resolve=True)
    trainer_args.pop("_target_", None)
    return train_population(instantiate(base.data), source, k, trainer_args, callbacks)
