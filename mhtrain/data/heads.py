"""Heads are declared once, in the data config; everything else derives from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mhtrain import ConfigError


@dataclass(frozen=True)
class Head:
    """One task: a name, its class count and the map from the base label to its label."""

    name: str
    classes: int
    map: tuple[int, ...] | None = None  # None: the base label itself
    per_head: bool = False  # the dataset carries this head's labels (CIFAR-100-MH)

    def labels(self, base: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """This head's labels, from a tensor of base labels or the dataset's per-head labels."""
        if self.per_head:
            return base[self.name].long()
        if self.map is None:
            return base.long()
        return torch.tensor(self.map, dtype=torch.long)[base.long()]


def parse_heads(spec: Mapping, base_classes: int) -> dict[str, Head]:
    """Validate a `heads:` config block into ordered Heads (the first is the primary head).

    A map may be a list indexed by the base label or a dict base label -> label.
    """
    if not spec:
        raise ConfigError("data.heads is empty: declare at least one head (name: {classes: N})")
    heads: dict[str, Head] = {}
    for name, h in spec.items():
        classes = h.get("classes") if isinstance(h, Mapping) else None
        if not isinstance(classes, int) or classes < 2:
            raise ConfigError(f"data.heads.{name}.classes={classes!r}: need an integer >= 2")
        raw = h.get("map")
        if raw is None:
            if classes != base_classes:
                raise ConfigError(
                    f"data.heads.{name} has no map, so it predicts the base label, but "
                    f"classes={classes} != {base_classes} base classes; add a map or fix classes"
                )
            heads[name] = Head(name, classes)
            continue
        if isinstance(raw, Mapping):
            table = {int(k): int(v) for k, v in raw.items()}
        else:
            table = {i: int(v) for i, v in enumerate(raw)}
        missing = sorted(set(range(base_classes)) - set(table))
        if missing:
            raise ConfigError(f"data.heads.{name}.map misses base label(s) {missing}")
        extra = sorted(set(table) - set(range(base_classes)))
        if extra:
            raise ConfigError(
                f"data.heads.{name}.map has key(s) {extra} outside base labels 0..{base_classes - 1}"
            )
        bad = {k: v for k, v in table.items() if not 0 <= v < classes}
        if bad:
            raise ConfigError(
                f"data.heads.{name}.map sends {bad} outside [0, {classes}); "
                f"raise classes or fix the map"
            )
        heads[name] = Head(name, classes, tuple(table[i] for i in range(base_classes)))
    return heads
