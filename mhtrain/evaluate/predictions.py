"""Per-image test outcomes of a re-run: for every head, which test images it got right, in the
test split's order, stored with the run (`test/<head>_correct`, one bit per image, base64) so a
bootstrap over seeds and test images can be drawn later without re-training.

The callback re-reads each test batch's predictions in the module's test pass (eval mode, the
checkpoint `fit` tests), so training is untouched and the bits agree with `test/<head>_acc`."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mhtrain.contract import metric_key


def key(head: str) -> str:
    """The record key of a head's per-image outcomes."""
    return metric_key("test", head, "correct")


def encode(correct: Sequence[bool] | np.ndarray) -> str:
    """Outcomes as base64 of their packed bits (1,250 bytes for 10,000 images)."""
    bits = np.asarray(correct, dtype=bool)
    return base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def decode(text: str, images: int) -> np.ndarray:
    """The first `images` outcomes of `encode`'s text, as a bool array."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) * 8 < images:
        raise ValueError(f"{len(raw) * 8} stored outcomes, {images} test images")
    return np.unpackbits(raw)[:images].astype(bool)


def outcomes(record: Mapping[str, Any], metric: str) -> np.ndarray | None:
    """Per-image value of `metric` for one stored run (a head's 0/1, or the mean over heads for
    `avg_acc`), or None when the run was stored without outcomes or the metric has none."""
    name = metric.removeprefix("test/").removesuffix("_acc")
    heads = [k for k in record if k.startswith("test/") and k.endswith("_correct")]
    images = record.get("test/images")
    if not isinstance(images, int) or not heads:
        return None
    if name == "avg":
        return np.mean([decode(record[k], images) for k in heads], axis=0)
    k = key(name)
    return decode(record[k], images).astype(float) if k in record else None


class TestOutcomes(Callback):
    """Collects every head's per-image correctness during `trainer.test`."""

    def __init__(self) -> None:
        self.correct: dict[str, list[torch.Tensor]] = {}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, targets = batch
        with torch.no_grad():
            logits = pl_module(x)
        for head, target in targets.items():
            self.correct.setdefault(head, []).append((logits[head].argmax(1) == target).cpu())

    def record(self) -> dict[str, Any]:
        """`test/<head>_correct` for every head and `test/images`: what a re-run stores."""
        if not self.correct:
            return {}
        done = {h: torch.cat(c).numpy() for h, c in self.correct.items()}
        return {"test/images": len(next(iter(done.values()))), **{key(h): encode(c) for h, c in done.items()}}
