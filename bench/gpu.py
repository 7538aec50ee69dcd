"""The GPU numbers in one command (at most ~10 minutes on one H100/H200), as a markdown table:

- one solo `fit` (Lightning) against a plain PyTorch loop on the same batches: samples/s;
- the same 32 random-search trials (bench/population.py's study) solo (K=1) and as populations
  of K=8 and K=32: wall time, trials/hour, best val/digit_acc, how far each member's best is
  from its solo run's (median and max of |member - solo|, points), peak GPU memory;
- the headline 50-trial `loss_weights` study at the quick fidelity, when Optuna and Hydra are
  installed (otherwise the row says how to get it).

Needs torch, Lightning, PyYAML and the MNIST files (MHTRAIN_DATA_DIR or ./data); no Optuna or
Hydra. Without a GPU it exits 2 with one line. TF32 stays at torch's defaults (cuDNN
convolutions may use it, matmuls do not); every run sees the same settings.

    python bench/gpu.py                   # 32 trials x 3 epochs on 20,000 images; K = 1, 8, 32
    python bench/gpu.py --trials 8 --train-subset 2000 --ks 1,8   # a quick look
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain import plain_epoch, sync  # noqa: E402
from population import TRAINER, build, datamodule, heads_of, measure, parser, sample_trials  # noqa: E402

from mhtrain import quiet  # noqa: E402
from mhtrain.data import mnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDY_CMD = ["studies/loss_weights.py", "--n-trials", "50", "--population", "auto", "--no-progress",
             "trainer.max_epochs=3", "data.train_subset=10000"]


class Clock(Callback):
    """Training samples/s of one epoch: first batch to the start of validation (synchronised)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            sync()
            self.start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        sync()
        self.end = time.perf_counter()


def throughput(args, device: torch.device, rounds: int = 3) -> tuple[float, float]:
    """Median samples/s of a solo fit and of the plain loop, alternating round by round."""
    trial = sample_trials(1, args.seed)[0]
    fitted, plain = [], []
    for _ in range(rounds + 1):  # the first round warms up
        dm = datamodule(args.data_dir, args.train_subset, 512, trial["seed"])
        clock, model = Clock(), build(trial, heads_of(dm))
        L.Trainer(**{**TRAINER, "accelerator": device.type}, max_epochs=1, callbacks=[clock]).fit(model, dm)
        batches = dm.train_dataloader()  # on the device, as the fit had them
        n = len(batches.index)
        fitted.append(n / (clock.end - clock.start))
        net = build(trial, heads_of(dm)).net.to(device)
        plain.append(n / plain_epoch(net, batches, trial["loss_weights"], trial["lr"]))
    return statistics.median(fitted[1:]), statistics.median(plain[1:])


def study_row() -> str:
    """The 50-trial loss_weights study at the quick fidelity, run as a user runs it."""
    missing = [m for m in ("optuna", "hydra") if importlib.util.find_spec(m) is None]
    if missing:
        return "| 50-trial loss_weights study | needs optuna: run studies/loss_weights.py | | | |"
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "study.journal"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *STUDY_CMD, "--storage", str(storage)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - start
        if done.returncode:
            why = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"| 50-trial loss_weights study | failed: {why} | | | |"
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal = JournalStorage(JournalFileBackend(str(storage)))
        study = optuna.load_study(study_name="loss_weights", storage=journal)
        return (f"| 50-trial loss_weights study (population auto, 3 epochs, 10k) | {wall:.0f} s | "
                f"{3600 * 50 / wall:.0f} trials/h | best {study.best_value:.4f} | |")


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.set_defaults(train_subset=20000, ks="1,8,32")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run this script's code on the CPU at the sizes given (its numbers mean nothing)")
    args = ap.parse_args(argv)
    quiet()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("error: no CUDA GPU here; bench/gpu.py measures the GPU path (bench/population.py runs "
              "on any device)", file=sys.stderr)
        raise SystemExit(2)
    if mnist.missing(args.data_dir):
        print(f"error: no MNIST under {args.data_dir}: set MHTRAIN_DATA_DIR or --data-dir",
              file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none (--cpu-smoke)"
    print(f"GPU: {gpu}; torch {torch.__version__}; lightning {L.__version__}; "
          f"{args.trials} trials x {args.epochs} epochs on {args.train_subset} images", flush=True)
    fit_rate, plain_rate = throughput(args, device)
    rows = measure(args, device)
    print("\n| run | wall s | trials/h (x solo) | best val/digit_acc | |member - solo| pp median / max "
          "| peak GPU memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| solo fit vs plain PyTorch loop | {fit_rate:.0f} vs {plain_rate:.0f} samples/s "
          f"({fit_rate / plain_rate:.2f}) | | | | |")
    for r in rows:
        g = r["gaps"]
        gap = f"{statistics.median(g):.2f} / {g[-1]:.2f}" if g and r["k"] > 1 else "-"
        label = "K=1 (solo fits)" if r["k"] == 1 else f"population K={r['k']}"
        print(f"| {label} | {r['wall']:.1f} | {r['per_hour']:.0f} ({r['ratio']:.2f}x) | "
              f"{r['best']:.4f} | {gap} | {r['mem']} |")
    print(study_row() if device.type == "cuda" else "| 50-trial loss_weights study | not run (--cpu-smoke) |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
