"""bench/peers.py: its row arithmetic on made-up clock records, and `--tiny` end to end for mhtrain
and Optuna's Lightning example on the tests' tiny MNIST (both run in the project's own environment,
whose lock pins optuna-integration)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))  # last: its modules shadow nothing

from peers_launch import Launch, row  # noqa: E402 - bench/ is not a package


def test_a_row_counts_trials_epochs_batches_and_the_first_time_at_the_target(tmp_path):
    run = Launch(ok=True, wall=100.0, peak_mb=500.0, processes=1, started=1000.0, log=tmp_path / "log",
                 result={})
    records = [
        {"fit": "a", "tag": "", "t": 1010.0, "event": "start"},
        {"fit": "a", "tag": "", "t": 1011.0, "event": "first_batch"},
        {"fit": "a", "tag": "", "t": 1030.0, "event": "val", "batches": 15.0, "acc": 0.90},
        {"fit": "a", "tag": "", "t": 1050.0, "event": "val", "batches": 30.0, "acc": 0.95},
        {"fit": "b", "tag": "", "t": 1060.0, "event": "start"},
        {"fit": "b", "tag": "", "t": 1061.0, "event": "first_batch"},
        {"fit": "b", "tag": "", "t": 1080.0, "event": "val", "batches": 10.0, "acc": 0.50},  # stopped
    ]
    r = row(run, records, target=0.95, slots=1, epochs=2)
    assert (r["trials"], r["epochs"], r["stopped"]) == (2, 3, 1)
    assert r["per_hour"] == pytest.approx(72.0)
    assert r["overhead"] == pytest.approx((100 - 40) / 2)
    assert (r["first_batch"], r["to_target"], r["best"]) == (11.0, 50.0, 0.95)
    assert math.isinf(row(run, records, target=0.99, slots=1, epochs=2)["to_target"])


def test_tiny_runs_mhtrain_and_the_optuna_example(tiny_data, tmp_path):
    overrides = [a for o in tiny_for(tiny_data) if not o.startswith("trainer.")
                 for a in ("--override", o)]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), "--tiny", "--tools",
                           "mhtrain,optuna", "--studies", "lr", "--no-pbt", "--out", str(tmp_path / "out"),
                           *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    mhtrain = next(line.split() for line in lines if line.startswith("mhtrain  "))
    assert mhtrain[-2:] == ["1.00", "1.00"], lines  # the ratios to itself
    assert int(mhtrain[3]) == 2, lines  # 2 trials x 1 epoch
    optuna = next(line.split() for line in lines if line.startswith("optuna  "))  # ran, not skipped
    assert int(optuna[3]) == 2, lines
