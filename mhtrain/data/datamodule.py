"""MNIST as a LightningDataModule that batches by indexing tensors (no per-sample Python)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import lightning as L
import torch

from mhtrain import ConfigError
from mhtrain.data import mnist
from mhtrain.data.heads import Head, parse_heads

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class TensorBatches:
    """Batches of normalised float images and per-head labels, gathered from uint8 tensors.

    Shuffling draws from torch's global RNG, so a seeded run sees the same order every time.
    """

    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor], index: torch.Tensor,
                 batch_size: int, shuffle: bool, mean: float, std: float) -> None:
        self.images, self.labels, self.index = images, labels, index
        self.batch_size, self.shuffle = batch_size, shuffle
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.index[torch.randperm(len(self.index))] if self.shuffle else self.index
        for chunk in order.split(self.batch_size):
            x = self.images[chunk].unsqueeze(1).float().div_(255).sub_(self.mean).div_(self.std)
            yield x, {name: y[chunk] for name, y in self.labels.items()}


class MNISTDataModule(L.LightningDataModule):
    """Train/val carved from the official training set by a fixed split seed; test is t10k.

    `train_subset`/`val_subset` keep the first N of that fixed permutation: the fidelity knob.
    """

    base_classes = 10
    image_shape = (1, 28, 28)

    def __init__(self, data_dir: str, heads: Mapping, multihead: bool = True, batch_size: int = 64,
                 val_size: int = 5000, split_seed: int = 42, train_subset: int | None = None,
                 val_subset: int | None = None, verify: bool = True,
                 mean: float = 0.1307, std: float = 0.3081) -> None:
        super().__init__()
        all_heads = parse_heads(heads, self.base_classes)
        self.heads: dict[str, Head] = (
            all_heads if multihead else dict([next(iter(all_heads.items()))])
        )
        for knob, value in (("batch_size", batch_size), ("val_size", val_size),
                            ("train_subset", train_subset), ("val_subset", val_subset)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{knob}={value}: must be a positive integer or null")
        self.data_dir, self.batch_size, self.val_size = data_dir, batch_size, val_size
        self.split_seed, self.train_subset, self.val_subset = split_seed, train_subset, val_subset
        self.verify, self.mean, self.std = verify, mean, std
        self._splits: dict[str, TensorBatches] = {}

    def prepare_data(self) -> None:
        if self.verify:
            mnist.ensure(self.data_dir)

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices into the official training set; depends on split_seed only."""
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images of {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val, train = perm[: self.val_size], perm[self.val_size :]
        return train[: self.train_subset], val[: self.val_subset]

    def _batches(self, split: str, index: torch.Tensor | None, shuffle: bool) -> TensorBatches:
        images, base = mnist.load(self.data_dir, split)
        labels = {name: head.labels(base) for name, head in self.heads.items()}
        if index is None:
            index = torch.arange(len(images))
        return TensorBatches(images, labels, index, self.batch_size, shuffle, self.mean, self.std)

    def setup(self, stage: str | None = None) -> None:
        # The test file is opened only for test/predict, so a search never touches it.
        if stage in ("fit", "validate", None) and "train" not in self._splits:
            train, val = self.split_indices(len(mnist.load(self.data_dir, "train")[0]))
            self._splits["train"] = self._batches("train", train, shuffle=True)
            self._splits["val"] = self._batches("train", val, shuffle=False)
        if stage in ("test", "predict") and "test" not in self._splits:
            self._splits["test"] = self._batches("test", None, shuffle=False)

    def train_dataloader(self) -> TensorBatches:
        return self._splits["train"]

    def val_dataloader(self) -> TensorBatches:
        return self._splits["val"]

    def test_dataloader(self) -> TensorBatches:
        return self._splits["test"]
