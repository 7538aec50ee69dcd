"""Image datasets as LightningDataModules that batch by indexing tensors (no per-sample Python).

A subclass says how to acquire and load a split as uint8 images (N×C×H×W) and labels; the base
class carves train/val, applies the heads and makes the batches. The uint8 images go to the
training device once; every batch is gathered and normalised there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import lightning as L
import torch

from mhtrain import ConfigError
from mhtrain.data import mnist
from mhtrain.data.heads import Head, parse_heads

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]

# (id of a loaded CPU tensor, device) -> (that tensor, its copy on the device): one copy per process
_resident: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def resident(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, copied there once per process (loaded splits are cached and never freed)."""
    if t.device == device:
        return t
    key = (id(t), str(device))
    if key not in _resident or _resident[key][0] is not t:
        _resident[key] = (t, t.to(device))
    return _resident[key][1]


class TensorBatches:
    """Batches of normalised float images and per-head labels, gathered from uint8 tensors.

    Shuffling draws from a generator of its own, seeded from the run's seed, so the order of a
    run's batches depends on its seed alone: a population member, which gets the same generator,
    sees exactly the batches its solo run sees. `index` stays on the CPU (its permutations come
    from a CPU generator on every device); images and labels live on the training device.
    """

    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor], index: torch.Tensor,
                 batch_size: int, shuffle: bool, mean: torch.Tensor, std: torch.Tensor,
                 seed: int = 0) -> None:
        self.images, self.labels, self.index = images, labels, index
        self.batch_size, self.shuffle = batch_size, shuffle
        self.mean, self.std = mean, std
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One epoch's sample order: the next permutation drawn from `generator` (default: this
        run's own), or the fixed order when not shuffling."""
        if not self.shuffle:
            return self.index
        return self.index[torch.randperm(len(self.index), generator=generator or self.generator)]

    def gather(self, idx: torch.Tensor) -> Batch:
        """The batch of the samples `idx` ([B], or [K, B] for K members at once)."""
        x = self.images[idx].float().div_(255).sub_(self.mean).div_(self.std)
        return x, {name: y[idx] for name, y in self.labels.items()}

    def __iter__(self) -> Iterator[Batch]:
        order = self.order().to(self.images.device, non_blocking=True)
        for chunk in order.split(self.batch_size):
            yield self.gather(chunk)


class MemberBatches:
    """K members' training batches at once: x is [K, B, C, H, W], labels [K, B].

    Member k's b-th batch is its solo run's b-th batch: its order comes from its own generator
    (seeded like a solo run's), and every member has the same number of batches per epoch.
    `generators` is asked at the start of every epoch, so members may change between epochs.
    """

    def __init__(self, batches: TensorBatches,
                 generators: Callable[[], Sequence[torch.Generator]]) -> None:
        self.batches, self.generators = batches, generators

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        orders = torch.stack([self.batches.order(g) for g in self.generators()])
        orders = orders.to(self.batches.images.device, non_blocking=True)
        for chunk in orders.split(self.batches.batch_size, dim=1):
            yield self.batches.gather(chunk)


class TensorDataModule(L.LightningDataModule):
    """Train/val carved from the training split by a fixed split seed; the test split apart.

    `train_subset`/`val_subset` keep the first N of that fixed permutation: the fidelity knob.
    `subset_seed` instead draws the training subset from the training part with that seed (a
    re-run sets it to its own seed, so seeds measure the effect of a size, not one subset).
    `seed` seeds the training order; None takes the seed the run seeded torch with
    (`fit` seeds everything with `cfg.seed` first), so the order follows the run's seed.
    """

    base_classes = 10  # labels a head's map starts from
    image_shape = (1, 28, 28)

    def __init__(self, data_dir: str, heads: Mapping | None = None, multihead: bool = True,
                 batch_size: int = 64, val_size: int = 5000, split_seed: int = 42,
                 train_subset: int | None = None, val_subset: int | None = None,
                 verify: bool = True, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, seed: int | None = None,
                 subset_seed: int | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.heads: dict[str, Head] = self.heads_from_config(
            {"data_dir": data_dir, "heads": heads, "multihead": multihead})
        for knob, value in (("batch_size", batch_size), ("val_size", val_size),
                            ("train_subset", train_subset), ("val_subset", val_subset)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"data.{knob}={value!r}: must be a positive integer or null")
        self.batch_size, self.val_size, self.split_seed = batch_size, val_size, split_seed
        self.train_subset, self.val_subset, self.verify = train_subset, val_subset, verify
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.seed = torch.initial_seed() if seed is None else seed
        self.subset_seed = subset_seed
        self._splits: dict[str, TensorBatches] = {}

    @classmethod
    def heads_from_config(cls, data: Mapping) -> dict[str, Head]:
        """The heads a data config declares (no images are read); the first is the primary."""
        heads = parse_heads(data.get("heads") or {}, cls.base_classes)
        return heads if data.get("multihead", True) else dict([next(iter(heads.items()))])

    @classmethod
    def shape_from_config(cls, data: Mapping) -> tuple[int, int, int]:
        """(channels, height, width) of the images; the model's input derives from it."""
        return cls.image_shape

    def acquire(self) -> None:
        """Make the files present and verified (download where possible), or raise why not."""

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        """(uint8 images N×C×H×W, base labels or per-head labels) of `train` or `test`."""
        raise NotImplementedError

    def head_labels(self, labels: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: head.labels(labels) for name, head in self.heads.items()}

    def prepare_data(self) -> None:
        if self.verify:
            self.acquire()

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices into the training split; depends on split_seed only. A subset
        larger than what is there is refused, not quietly cut to it."""
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images of {n}")
        available = n - self.val_size
        if self.train_subset is not None and self.train_subset > available:
            raise ConfigError(f"data.train_subset={self.train_subset} is more than the {available:,} "
                              f"training images ({n:,} in the training split less data.val_size="
                              f"{self.val_size}); use at most {available} or null for all of them")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val, train = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset is not None and self.subset_seed is not None:
            drawn = torch.Generator().manual_seed(self.subset_seed)
            train = train[torch.randperm(len(train), generator=drawn)]
        return train[: self.train_subset], val[: self.val_subset]

    @property
    def device(self) -> torch.device:
        """Where batches are made: the device the attached Trainer trains on, else the CPU."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _batches(self, split: str, index: torch.Tensor | None, shuffle: bool) -> TensorBatches:
        images, labels = self.load(split)
        if index is None:
            index = torch.arange(len(images))
        device = self.device
        labels = {name: y.to(device) for name, y in self.head_labels(labels).items()}
        return TensorBatches(resident(images, device), labels, index, self.batch_size, shuffle,
                             self.mean.to(device), self.std.to(device), self.seed)

    def setup(self, stage: str | None = None) -> None:
        # The test split is opened only for test/predict, so a search never touches it.
        if stage in ("fit", "validate", None) and "train" not in self._splits:
            train, val = self.split_indices(len(self.load("train")[0]))
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


class MNISTDataModule(TensorDataModule):
    """MNIST from verified IDX files; heads map from the digit."""

    def acquire(self) -> None:
        mnist.ensure(self.data_dir)

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = mnist.load(self.data_dir, split)
        return images.unsqueeze(1), labels
