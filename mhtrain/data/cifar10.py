"""CIFAR-10 through torchvision's own loading code (`cifar-10-batches-py` layout)."""

from __future__ import annotations

import torch
from torchvision.datasets import CIFAR10

from mhtrain import DataError
from mhtrain.data.datamodule import TensorDataModule

_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


class UncheckedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 without the MD5 checks: for files that are not the official ones
    (tests build a small dataset in the same layout)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10; heads map from the class label (10 classes)."""

    image_shape = (3, 32, 32)

    def acquire(self) -> None:
        try:
            CIFAR10(self.data_dir, train=True, download=True)
        except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
            raise DataError(
                f"CIFAR-10 not found in {self.data_dir}/{CIFAR10.base_folder} and the download "
                f"failed ({type(e).__name__}: {e}); put the python-version batches there "
                "or point MHTRAIN_DATA_DIR at a directory holding them") from None

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(self.data_dir), split, self.verify)
        if key not in _cache:
            cls = CIFAR10 if self.verify else UncheckedCIFAR10
            ds = cls(self.data_dir, train=split == "train")
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            _cache[key] = images, torch.tensor(ds.targets, dtype=torch.uint8)
        return _cache[key]
