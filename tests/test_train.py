import csv
import subprocess
import sys
from pathlib import Path

import pytest

from mhtrain import ConfigError, DataError
from mhtrain.config import compose
from mhtrain.contract import metric_names
from mhtrain.data import mnist
from mhtrain.train import fit
from tests.conftest import ROOT, needs_real_data, tiny_for, write_tiny_mnist


def test_fit_on_tiny_data_logs_the_metric_contract(tiny_overrides, tmp_path: Path):
    cfg = compose("multihead_cnn_mnist", [*tiny_overrides, "model.optimizer.lr=0.003"])
    result = fit(cfg)
    assert result.epochs == 2 and len(result.history) == 2
    assert result.params == 422_866
    assert 0.0 <= result.best["val/digit_acc"] <= 1.0
    assert result.best["val/acc_best"] == max(e["val/digit_acc"] for e in result.history)
    # the tiny digits are drawn to be learnable: a working model beats chance clearly
    assert result.best["val/digit_acc"] > 0.3
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        columns = set(csv.DictReader(f).fieldnames)
    assert set(metric_names(["digit", "thickness", "smoothness"])) <= columns
    assert set(result.test) >= {"test/digit_acc", "test/avg_acc", "test/weighted_acc"}
    assert (tmp_path / "run" / "config.yaml").exists()
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_fit_without_test_never_reads_the_test_split(tmp_path: Path):
    """A search must never read the test split: here it is a damaged file, which reading fails on
    (checked with test=true), in a dataset no earlier test could have cached."""
    root = write_tiny_mnist(tmp_path / "data", seed=7)
    for name in mnist.SPLIT_FILES["test"]:
        (mnist.raw_dir(root) / name).write_bytes(b"not an IDX file")
    overrides = [*tiny_for(root, epochs=1), f"paths.output_dir={tmp_path / 'run'}"]
    result = fit(compose("cnn_mnist", [*overrides, "test=false"]))
    assert result.test == {} and result.params == 421_834
    with pytest.raises(DataError):
        fit(compose("cnn_mnist", [*overrides, "test=true"]))


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mhtrain.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path):
    proc = run_cli("experiment=multihead_cnn_mnist", "model.loss_weights.digit=-2",
                   f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.loss_weights")
    assert not (tmp_path / "csv").exists() and not (tmp_path / "checkpoints").exists()


@needs_real_data
@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "heads"), [
    ("multihead_cnn_mnist", ["digit", "thickness", "smoothness"]),
    ("cnn_mnist", ["digit"]),
])
def test_fast_dev_run_on_real_files(experiment, heads, tmp_path: Path):
    proc = run_cli(f"experiment={experiment}", "+trainer.fast_dev_run=true",
                   f"paths.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for h in heads:
        assert f"val/{h}_acc" in proc.stdout
    assert ("val/thickness_acc" in proc.stdout) == ("thickness" in heads)


@pytest.mark.slow
def test_ctrl_c_of_a_training_run_exits_130(tiny_data: Path, tmp_path: Path):
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mhtrain.train", "experiment=multihead_cnn_mnist",
                             f"data.data_dir={tiny_data}", "data.verify=false", "data.val_size=100",
                             "trainer.max_epochs=500", "callbacks.early_stopping=null",
                             f"paths.output_dir={out}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(2.0)  # into training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err


@pytest.mark.parametrize(("overrides", "named"), [
    (["trainer.check_val_every_n_epoch=2", "trainer.max_epochs=1"], "no epoch would validate"),
    (["trainer.check_val_every_n_epoch=2", "trainer.max_epochs=4"], "model.scheduler steps on val/loss"),
    (["++trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["data.train_subset=abc"], "data.train_subset='abc'"),
    (["callbacks.early_stopping.monitor=val/digit_accc"], "val/digit_accc is not logged"),
    (["model.scheduler_monitor=val/nope"], "model.scheduler_monitor=val/nope is not logged"),
])
def test_configs_lightning_fails_only_mid_epoch_are_refused_when_composed(overrides, named):
    with pytest.raises(ConfigError, match=named):
        compose("multihead_cnn_mnist", ["data.verify=false", *overrides])


def test_validating_every_other_epoch_is_fine_without_a_val_scheduler():
    compose("multihead_cnn_mnist", ["data.verify=false", "trainer.check_val_every_n_epoch=2",
                                    "trainer.max_epochs=4", "model.scheduler=null"])
