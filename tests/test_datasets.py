"""Beyond MNIST: a config-only fourth head, CIFAR-10 through torchvision, CIFAR-100-MH."""

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mhtrain import ConfigError, DataError
from mhtrain.config import compose, heads_of
from mhtrain.data import cifar100mh
from mhtrain.study import runner, study_config
from mhtrain.train import fit
from tests.conftest import ROOT, tiny_for


def quick(tmp_path: Path, *extra: str) -> list[str]:
    """A one-epoch run without test, on whatever data the caller names."""
    return ["data.val_size=100", "data.batch_size=32", "trainer.max_epochs=1", "test=false",
            "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}", *extra]


def test_fourth_head_is_config_only(tiny_data, tmp_path, monkeypatch):
    overrides = tiny_for(tiny_data, epochs=1)
    cfg = compose("multihead_cnn_mnist", ["data=multihead_mnist_orientation", *overrides,
                                          *quick(tmp_path, "++model.loss_weights.orientation=0.7")])
    assert heads_of(cfg)["orientation"] == 4
    result = fit(cfg)
    assert "val/orientation_acc" in result.best and result.params == 422_866 + 516

    monkeypatch.chdir(tmp_path)
    study = study_config.load("orientation_weights", n_trials=1,
                       extra_overrides=overrides)
    ostudy, _ = runner.run(study, f"sqlite:///{tmp_path / 'o.db'}", progress=False)
    assert "model.loss_weights.orientation" in ostudy.trials[0].params
    assert "best_val/orientation_acc" in ostudy.trials[0].user_attrs


def test_loss_weight_of_an_undeclared_head_is_still_refused():
    with pytest.raises(ConfigError, match="orientation"):
        compose("multihead_cnn_mnist", ["++model.loss_weights.orientation=1.0"])


def write_cifar10(root: Path, per_batch: int = 40) -> Path:
    """A small dataset in torchvision's `cifar-10-batches-py` layout (not the official files)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 60, (per_batch, 3, 32, 32), dtype=np.uint8)
        data[np.arange(per_batch), labels % 3, labels * 3, :] = 255  # learnable
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(per_batch, -1), "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def test_cifar10_multihead_fits_one_epoch_through_torchvision(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    cfg = compose("multihead_cnn_cifar10",
                  [f"data.data_dir={root}", "data.verify=false", *quick(tmp_path)])
    result = fit(cfg)
    assert list(result.heads) == ["class", "domain", "mobility", "size"]
    assert {"val/class_acc", "val/domain_acc", "val/mobility_acc", "val/size_acc"} <= set(result.best)
    assert cfg.optimized_metric == "val/class_acc"


def test_cifar10_that_is_not_official_is_a_clear_error(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    cfg = compose("multihead_cnn_cifar10", [f"data.data_dir={root}", *quick(tmp_path)])
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        fit(cfg)


@pytest.fixture(scope="module")
def built(tiny_data, tmp_path_factory) -> Path:
    """Built once: every test reads it, and corrupt() changes a copy."""
    out = tmp_path_factory.mktemp("c100mh") / "mh"
    proc = subprocess.run([sys.executable, "-m", "mhtrain.data.cifar100mh", "build", "--from", "mnist",
                           "--out", str(out), f"data.data_dir={tiny_data}", "data.verify=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "heads {'digit': 10, 'thickness': 5, 'smoothness': 3}" in proc.stdout
    return out


def test_round_trip_keeps_images_and_labels(built, tiny_data):
    from hydra.utils import instantiate

    dm = instantiate(compose("multihead_cnn_mnist", [f"data.data_dir={tiny_data}"]).data)
    for split in ("train", "test"):
        images, base = dm.load(split)
        got_images, got_labels = cifar100mh.read_split(built, split)
        assert torch.equal(got_images, images)
        for name, labels in dm.head_labels(base).items():
            assert torch.equal(got_labels[name], labels)


def test_heads_come_from_the_metadata(built, tmp_path):
    cfg = compose("multihead_cnn_cifar100mh", [f"data.root={built}"])
    assert heads_of(cfg) == {"digit": 10, "thickness": 5, "smoothness": 3}
    with pytest.raises(ConfigError, match="disagree with the dataset's metadata"):
        compose("multihead_cnn_cifar100mh", [f"data.root={built}", "data.heads={digit: {classes: 10}}"])
    with pytest.raises(ConfigError, match="not a CIFAR-100-MH dataset"):
        compose("multihead_cnn_cifar100mh", [f"data.root={tmp_path / 'nothing'}"])


@pytest.mark.slow  # 12 s: the datasets round-trip in the fast tier; this fit in the full one
def test_one_epoch_fit_and_a_two_trial_study(built, tmp_path, monkeypatch):
    result = fit(compose("multihead_cnn_cifar100mh", [f"data.root={built}", *quick(tmp_path)]))
    assert {"val/digit_acc", "val/thickness_acc", "val/smoothness_acc"} <= set(result.best)
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mhtrain.study", "run", "cifar100mh_loss_weights",
                           "--n-trials", "2", "--no-progress", "--storage", f"sqlite:///{tmp_path / 'mh.db'}",
                           f"data.root={built}", "data.val_size=100", "trainer.max_epochs=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "study cifar100mh_loss_weights: 2 trials (2 complete)" in proc.stdout


def corrupt(built: Path, tmp_path: Path, change) -> Path:
    """A copy of the built dataset with `change(batch, info)` applied to its train split."""
    import json
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(built, copy)
    with open(copy / "train_batch", "rb") as f:
        batch = pickle.load(f)
    info = json.loads((copy / cifar100mh.INFO).read_text())
    change(batch, info)
    with open(copy / "train_batch", "wb") as f:
        pickle.dump(batch, f)
    (copy / cifar100mh.INFO).write_text(json.dumps(info))
    return copy


@pytest.mark.parametrize(("change", "message"), [
    (lambda b, i: b["labels"].__setitem__(0, bytes([3, 0, 1, 1, 2])), "does not match its n=3"),
    (lambda b, i: b["labels"].pop(), "images but"),
    (lambda b, i: i.__setitem__("image_size", "32x32x3"), "do not match image_size"),
    (lambda b, i: b["labels"].__setitem__(0, bytes([1, 7, 1])), "id 7 is missing from parameter_names"),
    (lambda b, i: b["labels"].__setitem__(0, bytes([3, 0, 12, 1, 1, 2, 1])), "digit=12 outside"),
])
def test_each_validation_error(built, tmp_path, change, message):
    bad = corrupt(built, tmp_path, change)
    with pytest.raises(DataError, match=message):
        cifar100mh.read_split(bad, "train")


def test_even_odd_thickness_map_is_a_config_file():
    cfg = compose("multihead_cnn_mnist", ["data=multihead_mnist_evenodd"])
    assert heads_of(cfg) == {"digit": 10, "thickness": 2, "smoothness": 3}
    assert list(cfg.data.heads.thickness.map.values()) == [0, 1] * 5


def with_info(built: Path, tmp_path: Path, change) -> Path:
    """A copy of the built dataset whose metadata file is `change(info)` (a dict to write as JSON,
    or the text to write)."""
    import shutil

    copy = tmp_path / "downloaded"
    shutil.copytree(built, copy)
    info = change(json.loads((copy / cifar100mh.INFO).read_text()))
    (copy / cifar100mh.INFO).write_text(info if isinstance(info, str) else json.dumps(info))
    return copy


def _set(key: str, value):
    return lambda info: {**info, key: value}


@pytest.mark.parametrize(("change", "named"), [
    (_set("parameter_names", ["digit", "thickness", "smoothness"]), "parameter_names"),
    (lambda i: {**i, "parameter_names": {**i["parameter_names"], "a": "extra"}}, "parameter_names.a"),
    (lambda i: {**i, "parameter_mappings": {**i["parameter_mappings"], "digit": {"min": 0, "max": "9"}}},
     "parameter_mappings.digit.max = '9'"),
    (lambda i: {**i, "parameter_mappings": {**i["parameter_mappings"], "digit": [0, 9]}},
     "parameter_mappings.digit"),
    (lambda i: json.dumps(i)[:-1] + ', "x": ' + "9" * 5000 + "}", "not valid JSON"),
    (_set("image_size", "2x2x1"), "image_size 2x2x1: sides must be 8 to 4096"),
    (_set("parameter_names", {"0": "digit\nx"}), "parameter_names.0"),
])
def test_downloaded_metadata_is_one_line_for_validate_and_training(built, tmp_path, change, named, capsys):
    """Metadata that is not what the format holds: `validate` exits 2 with one line naming the
    file and field, and training (composing the config reads the heads) says the same line."""
    bad = with_info(built, tmp_path, change)
    capsys.readouterr()
    assert cifar100mh.main(["validate", str(bad)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {bad / cifar100mh.INFO}") and named in line, line
    with pytest.raises((ConfigError, DataError), match=re.escape(named)) as e:
        fit(compose("multihead_cnn_cifar100mh", [f"data.root={bad}", *quick(tmp_path)]))
    assert "\n" not in str(e.value)


def test_metadata_without_mappings_takes_classes_from_the_labels(built, tmp_path, capsys):
    """The format lets a folder leave out `parameter_mappings`: validate and training count each
    head's classes alike, from its largest label."""
    bad = with_info(built, tmp_path, lambda i: {k: v for k, v in i.items() if k != "parameter_mappings"})
    capsys.readouterr()
    assert cifar100mh.main(["validate", str(bad)]) == 0
    assert "heads {'digit': 10, 'thickness': 5, 'smoothness': 3}" in capsys.readouterr().out
    assert heads_of(compose("multihead_cnn_cifar100mh", [f"data.root={bad}"])) == {
        "digit": 10, "thickness": 5, "smoothness": 3}
