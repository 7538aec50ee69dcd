"""Shared fixtures: a tiny MNIST-layout dataset written by the tests, and the real one if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mhtrain.data import mnist

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = os.environ.get("MHTRAIN_DATA_DIR", str(ROOT / "data"))
has_real_data = not mnist.missing(REAL_DATA)
needs_real_data = pytest.mark.skipif(
    not has_real_data, reason=f"no MNIST under {REAL_DATA} (set MHTRAIN_DATA_DIR or `make data`)")


def write_tiny_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """IDX files whose digit is drawn as a bright row at height 2*digit+4, plus noise: learnable
    in an epoch or two, so tests can tell a training model from a broken one."""
    g = torch.Generator().manual_seed(seed)
    raw = mnist.raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=g)]
        images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8)
        images[torch.arange(n), 2 * labels + 4, 4:24] = 255
        img_name, lbl_name = mnist.SPLIT_FILES[split]
        mnist.write_idx_images(raw / img_name, images)
        mnist.write_idx_labels(raw / lbl_name, labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


def tiny_for(data: Path, epochs: int = 2) -> list[str]:
    """The one tiny-override list: any experiment or study becomes a seconds-long real fit on
    the MNIST-layout files under `data`."""
    return [f"data.data_dir={data}", "data.verify=false", "data.val_size=100", "data.batch_size=32",
            f"trainer.max_epochs={epochs}"]


@pytest.fixture
def tiny(tiny_data: Path) -> list[str]:
    """Study-level tiny overrides (each trial writes to its own folder)."""
    return tiny_for(tiny_data)


@pytest.fixture
def tiny_overrides(tiny: list[str], tmp_path: Path) -> list[str]:
    """Tiny overrides for one training run, writing to `tmp_path/run`."""
    return [*tiny, "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}"]
