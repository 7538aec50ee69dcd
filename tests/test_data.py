import re
from pathlib import Path

import pytest
import torch

from mhtrain import ConfigError, DataError
from mhtrain.config import compose
from mhtrain.data import MNISTDataModule, mnist, parse_heads
from tests.conftest import REAL_DATA, needs_real_data

THICKNESS = [2, 1, 3, 3, 2, 3, 2, 1, 4, 3]
SMOOTHNESS = [2, 0, 1, 1, 0, 1, 2, 0, 2, 2]


def test_seed_label_maps_are_the_defaults():
    cfg = compose("multihead_cnn_mnist")
    dm = MNISTDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    digits = torch.arange(10)
    assert list(dm.heads) == ["digit", "thickness", "smoothness"]
    assert dm.heads["digit"].labels(digits).tolist() == list(range(10))
    assert dm.heads["thickness"].labels(digits).tolist() == THICKNESS
    assert dm.heads["smoothness"].labels(digits).tolist() == SMOOTHNESS


def test_single_task_data_keeps_the_primary_head_only():
    cfg = compose("cnn_mnist")
    dm = MNISTDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    assert list(dm.heads) == ["digit"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"t": {"classes": 3, "map": [0, 1, 2]}}, "misses base label"),
    ({"t": {"classes": 2, "map": [0, 1, 2, 0, 1, 0, 1, 0, 1, 0]}}, "outside [0, 2)"),
    ({"t": {"classes": 5}}, "predicts the base label"),
    ({"t": {"classes": 1, "map": [0] * 10}}, "integer >= 2"),
    ({}, "empty"),
])
def test_bad_heads_are_rejected(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_heads(spec, 10)


def test_split_sizes_disjoint_and_independent_of_trial_seed():
    dm = MNISTDataModule("unused", {"digit": {"classes": 10}})
    torch.manual_seed(1)
    train, val = dm.split_indices(60_000)
    torch.manual_seed(2)
    train2, val2 = dm.split_indices(60_000)
    assert (len(train), len(val)) == (55_000, 5_000)
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(train, train2) and torch.equal(val, val2)
    sub = MNISTDataModule("unused", {"digit": {"classes": 10}}, train_subset=1000, val_subset=200)
    sub_train, sub_val = sub.split_indices(60_000)
    assert torch.equal(sub_train, train[:1000]) and torch.equal(sub_val, val[:200])
    assert len(MNISTDataModule("unused", {"digit": {"classes": 10}}, train_subset=55_000)
               .split_indices(60_000)[0]) == 55_000  # all of it, exactly


def test_a_subset_larger_than_the_data_is_refused_not_cut():
    big = MNISTDataModule("unused", {"digit": {"classes": 10}}, train_subset=55_001)
    with pytest.raises(ConfigError, match=re.escape("data.train_subset=55001 is more than the 55,000 "
                                                    "training images (60,000 in the training split")):
        big.split_indices(60_000)


def test_fit_stage_never_opens_the_test_split(tiny_data: Path, tmp_path: Path):
    # a data dir whose test files are absent: fitting must not need them
    root = tmp_path / "no_test"
    raw = mnist.raw_dir(root)
    raw.mkdir(parents=True)
    for name in mnist.SPLIT_FILES["train"]:
        (raw / name).write_bytes((mnist.raw_dir(tiny_data) / name).read_bytes())
    dm = MNISTDataModule(str(root), {"digit": {"classes": 10}}, val_size=100, verify=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert len(dm.train_dataloader().index) == 500 and len(dm.val_dataloader().index) == 100
    with pytest.raises(DataError, match="missing .*t10k-images"):
        dm.setup("test")


def test_batches_cover_the_split_once_and_cache_reads_once(tiny_data: Path):
    dm = MNISTDataModule(str(tiny_data), {"digit": {"classes": 10}}, val_size=100,
                         batch_size=64, verify=False)
    dm.setup("fit")
    seen = torch.cat([y["digit"] for _, y in dm.train_dataloader()])
    assert len(seen) == 500 and len(dm.train_dataloader()) == 8
    again = MNISTDataModule(str(tiny_data), {"digit": {"classes": 10}}, verify=False)
    assert mnist.load(str(tiny_data), "train")[0] is mnist.load(str(again.data_dir), "train")[0]


def test_corrupt_file_is_a_checksum_error_and_is_not_overwritten(tmp_path: Path):
    raw = mnist.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in mnist.SHA256:
        (raw / name).write_bytes(b"not mnist " + name.encode())
    with pytest.raises(mnist.DataError, match="checksum mismatch"):
        mnist.ensure(tmp_path)
    for name in mnist.SHA256:
        assert (raw / name).read_bytes() == b"not mnist " + name.encode()


@needs_real_data
def test_real_files_verify_and_load():
    mnist.ensure(REAL_DATA)
    images, labels = mnist.load(REAL_DATA, "train")
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and int(labels.max()) == 9
    assert mnist.load(REAL_DATA, "test")[0].shape == (10_000, 28, 28)


def test_a_subset_seed_draws_the_training_subset_per_seed():
    """`data.train_subset` alone is the first N of one fixed permutation, the same images for every
    seed; with `subset_seed` each seed trains on its own draw from the training part."""
    def subset(**kw: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = MNISTDataModule("unused", {"digit": {"classes": 10}}, train_subset=500, **kw)
        return dm.split_indices(60_000)

    full_train, full_val = MNISTDataModule("unused", {"digit": {"classes": 10}}).split_indices(60_000)
    fixed, fixed_val = subset()
    a, val_a = subset(subset_seed=1000)
    b, _ = subset(subset_seed=1001)
    assert torch.equal(fixed, full_train[:500]) and torch.equal(a, subset(subset_seed=1000)[0])
    assert len(a) == len(b) == 500 and not torch.equal(a, b) and len(set(a.tolist()) & set(b.tolist())) < 50
    assert set(a.tolist()) <= set(full_train.tolist())  # never a validation image
    assert torch.equal(val_a, fixed_val)  # validation does not move with it
    whole, _ = MNISTDataModule("unused", {"digit": {"classes": 10}}, subset_seed=7).split_indices(60_000)
    assert torch.equal(whole, full_train)  # without a subset it changes nothing
