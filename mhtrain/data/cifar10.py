"""CIFAR-10 through torchvision's own loading code (`cifar-10-batches-py` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, VisionDataset

from mhtrain import DataError
from mhtrain.data.cifar100mh import load_batch
from mhtrain.data.datamodule import TensorDataModule

_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


class UncheckedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 without the MD5 checks: for files that are not the official ones
    (tests build a small dataset in the same layout). Unchecked files may come from anyone, so
    they are read with the restricted unpickler (`cifar100mh.load_batch`), never with the plain
    `pickle.load` of torchvision, which is safe only after its MD5 check of the official files."""

    def __init__(self, root: str, train: bool = True) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            path = Path(root) / self.base_folder / name
            if not path.is_file():
                raise DataError(f"{path} is missing; put the python-version CIFAR-10 batches there")
            entry = load_batch(path)
            labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
            if labels is None or "data" not in entry:
                raise DataError(f"{path} needs keys 'data' and 'labels'; not a CIFAR-10 batch file")
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            self.targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC


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
            # verified: torchvision unpickles only after every file matches the official MD5
            cls = CIFAR10 if self.verify else UncheckedCIFAR10
            ds = cls(self.data_dir, train=split == "train")
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            _cache[key] = images, torch.tensor(ds.targets, dtype=torch.uint8)
        return _cache[key]
