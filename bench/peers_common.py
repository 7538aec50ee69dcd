"""What bench/peers.py's runners share: the run's settings as the driver hands them over, the search
space read from mhtrain's own study config (so no peer searches a range written twice), and one
trial's mhtrain model and datamodule built as `mhtrain.train.fit` builds them (compose, then
instantiate). Runs in the driver's environment and in the peers' (each has mhtrain installed)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "multihead_cnn_mnist"
METRIC = "val/digit_acc"


@dataclass(frozen=True)
class RunSpec:
    """One search as every tool runs it: which study config, how many trials at which fidelity."""

    study: str  # conf/study/<study>.yaml: its search space and fixed overrides
    n_trials: int
    epochs: int
    train_images: int | None
    val_images: int | None
    seed: int = 0
    clock: str = ""  # the JSON-lines file peers_clock.BatchClock appends to
    workdir: str = "."  # where the tool may write (logs, checkpoints, results)
    extra: dict[str, Any] = field(default_factory=dict)  # tool-specific knobs

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))

    def fidelity(self) -> list[str]:
        """The Hydra overrides of the fidelity, as `make study-lr`'s QUICK writes them."""
        return [f"trainer.max_epochs={self.epochs}",
                f"data.train_subset={'null' if self.train_images is None else self.train_images}",
                f"data.val_subset={'null' if self.val_images is None else self.val_images}"]


def study_config(study: str) -> dict[str, Any]:
    """conf/study/<study>.yaml as plain data."""
    return yaml.safe_load((ROOT / "conf" / "study" / f"{study}.yaml").read_text())


def search_space(study: str) -> dict[str, dict[str, Any]]:
    """The study's searched keys: key -> {type, low, high, log}. Floats only (the peers' studies)."""
    space = study_config(study)["search_space"]
    for key, p in space.items():
        if p.get("type", "float") != "float":
            raise SystemExit(f"{study}: {key} is not a float range; bench/peers.py compares floats only")
    return {k: {"low": float(p["low"]), "high": float(p["high"]), "log": bool(p.get("log", False))}
            for k, p in space.items()}


def short(key: str) -> str:
    """A searched key as a plain parameter name (Ray's and Optuna's own names): its last part."""
    return key.rsplit(".", 1)[-1]


def trial_overrides(spec: RunSpec, values: dict[str, float], seed: int) -> list[str]:
    """One trial's Hydra overrides: the study's fixed ones, the fidelity, the run's own (`--override`),
    its values, its seed."""
    fixed = study_config(spec.study).get("overrides") or []
    return [*fixed, *spec.fidelity(), *spec.extra.get("overrides", []),
            *(f"++{k}={v!r}" for k, v in values.items()), f"seed={seed}", "test=false"]


def build(spec: RunSpec, values: dict[str, float], seed: int) -> tuple[Any, Any, Any]:
    """(cfg, datamodule, model) of one trial, as `mhtrain.train.fit` builds them: the network and the
    data are mhtrain's, so what differs between the tools is the harness."""
    import lightning as L
    from hydra.utils import instantiate

    from mhtrain.config import build_model, compose

    cfg = compose(EXPERIMENT, trial_overrides(spec, values, seed))
    L.seed_everything(seed, workers=True, verbose=False)
    return cfg, instantiate(cfg.data), build_model(cfg)
