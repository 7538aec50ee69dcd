"""The metric contract and the loss-weight rules: names and checks only, no torch, no Lightning,
so the config checks, the trial lifecycle and the reports share them without importing a trainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mhtrain import ConfigError

SPLITS = ("train", "val", "test")
# model.weighting: mhtrain/models/module.py (fixed, uncertainty) and mhtrain/models/weighting.py
WEIGHTINGS = ("fixed", "uncertainty", "dwa", "rlw", "upgrad", "pcgrad")


def metric_key(split: str, head: str | None, kind: str) -> str:
    """The one place metric names are built: `{split}/{head}_{kind}`, or `{split}/{kind}` for a
    whole-model value (`val/loss`); aggregates use a pseudo-head (`avg`, `weighted`). A head's
    loss weight is `{split}/weight_{head}`, so a logger's sorted columns keep the weights together."""
    if head is None:
        return f"{split}/{kind}"
    return f"{split}/weight_{head}" if kind == "weight" else f"{split}/{head}_{kind}"


def metric_names(heads: list[str], splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Every metric a model with these heads logs; checked against a study's metric up front."""
    names = [metric_key("val", None, "acc_best")] if "val" in splits else []
    for split in splits:
        names += [metric_key(split, None, "loss")]
        names += [metric_key(split, h, kind) for h in heads for kind in ("acc", "loss")]
        if len(heads) > 1:
            names += [metric_key(split, "avg", "acc"), metric_key(split, "weighted", "acc")]
        if split == "train":
            names += [metric_key(split, h, "weight") for h in heads]
    return names


def best_of(epochs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Best value of each val metric over epochs: max for accuracies, min for losses. A solo
    run and a population member are judged by this one rule."""
    keys = {k for e in epochs for k in e}
    pick = {k: (min if k.endswith("loss") else max) for k in keys}
    return {k: pick[k](e[k] for e in epochs if k in e) for k in sorted(keys)}


def check_loss_weights(heads: list[str], loss_weights: Mapping[str, float]) -> dict[str, float]:
    """Complete `loss_weights` (missing heads weigh 1.0), rejecting what cannot train."""
    unknown = sorted(set(loss_weights) - set(heads))
    if unknown:
        raise ConfigError(
            f"model.loss_weights has {unknown} but the heads are {heads}; "
            "remove the key or declare the head in data.heads"
        )
    weights = {h: float(loss_weights.get(h, 1.0)) for h in heads}
    negative = {h: w for h, w in weights.items() if w < 0}
    if negative:
        raise ConfigError(f"model.loss_weights {negative}: weights must be >= 0")
    if not any(weights.values()):
        raise ConfigError(f"model.loss_weights are all zero ({weights}): nothing would train")
    return weights


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"model.weighting={weighting!r}: must be one of {', '.join(WEIGHTINGS)}")
    return weighting
