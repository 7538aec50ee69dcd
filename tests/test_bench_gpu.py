"""bench/gpu.py, the first thing a GPU runs, takes its every step on the CPU here (`--cpu`): the
plain loop, solo fits, a population, the study as a subprocess, and the table."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--trials", "2", "--epochs", "1", "--train-subset", "64", "--val-size", "32", "--val-subset", "32",
        "--ks", "1,2", "--study-trials", "2", "--rounds", "0"]


def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # over 10 s: the full tier
def test_the_whole_gpu_bench_runs_on_the_cpu_and_prints_its_table(tiny_data, tmp_path):
    # the study subprocess gets the data directory from --data-dir alone (it tried to download
    # MNIST), and a study that works leaves a row (an unbound name made the script exit 1)
    env = {k: v for k, v in os.environ.items() if k != "MHTRAIN_DATA_DIR"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu", "--data-dir",
                           str(tiny_data), *TINY], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[2:]] == [
        "| solo fit vs plain PyTorch loop", "| solo fit: NCHW instead of channels-last",
        "| solo fit: and cuDNN autotuner on (the population's settings)",
        "| K=1 (solo fits, population's settings)", "| population K=2",
        "| 2-trial loss_weights study (population 2)"]
    study = rows[-1].split(" | ")
    assert sum(int(n) for n in re.findall(r"(\d+) (?:complete|pruned)", study[2])) == 2, rows[-1]
    assert 0 < float(study[3]) <= 1, rows[-1]
    assert not list(tmp_path.iterdir())  # the study's trials wrote in a folder of their own


def test_a_study_past_its_time_is_stopped_and_said_so(tiny_data):
    bench = bench_gpu()
    args = argparse.Namespace(cpu=True, data_dir=str(tiny_data), study_trials=2, study_timeout=0.001,
                              epochs=1, train_subset=64, val_size=32)
    row = bench.study_row(args, grace=0)  # killed: it had TimeoutExpired escape
    assert row.startswith("| 2-trial loss_weights study | killed after 0.001 s |")


def test_bench_gpu_exits_2_with_one_line_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as e:
        bench_gpu().main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "GPU" in err
