"""The GPU numbers in one command (at most ~10 minutes on one H100/H200), as a markdown table:

- one solo `fit` (Lightning) against a plain PyTorch loop on the same batches: samples/s; then
  what the population's settings do to that solo fit, each on its own row: NCHW instead of
  channels-last (the only layout `vmap` keeps), and cuDNN's autotuner on (the engine turns it on);
- the same 32 random-search trials (bench/population.py's study) solo (K=1) and as populations
  of K=8 and K=32, solo and stacked alike with the population's settings, so the ratio is
  stacking alone: wall time, trials/hour, best val/digit_acc, how far each member's best is from
  its solo run's (median and max of |member - solo|, points), peak GPU memory;
- the headline 50-trial `loss_weights` study at the quick fidelity, run as a user runs it (a
  subprocess, `--population auto`, MNIST from --data-dir), when Optuna and Hydra are installed
  (otherwise the row says how to get it); past --study-timeout it is stopped and the row says so.

Needs torch, Lightning, PyYAML and the MNIST files (MHTRAIN_DATA_DIR or ./data); the study row
Optuna and Hydra too. Without a GPU it exits 2 with one line, unless `--cpu`: then every step
above runs on the CPU at tiny sizes (its numbers mean nothing; the tests run it). TF32 stays at
torch's defaults (cuDNN convolutions may use it, matmuls do not); every run sees the same settings.

    python bench/gpu.py                   # 32 trials x 3 epochs on 20,000 images; K = 1, 8, 32
    python bench/gpu.py --trials 8 --train-subset 2000 --ks 1,8   # a quick look
    python bench/gpu.py --cpu             # the whole path on the CPU in about a minute
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
STUDY = "loss_weights"
# the GPU run's sizes, and the CPU's (--cpu): every step still runs
GPU = {"trials": 32, "epochs": 3, "train_subset": 20000, "val_subset": None, "ks": "1,8,32",
       "study_trials": 50, "study_timeout": 240, "rounds": 3}
CPU = {"trials": 2, "epochs": 1, "train_subset": 256, "val_subset": 128, "ks": "1,2",
       "study_trials": 2, "study_timeout": 240, "rounds": 1}


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


# a solo fit's settings: `fit`'s own (channels-last, cuDNN's autotuner as the trainer config leaves
# it: off), then one change at a time towards the population's
SETTINGS = {"fit's own (channels-last, no cuDNN autotuner)": (True, False),
            "NCHW instead of channels-last": (False, False),
            "and cuDNN autotuner on (the population's settings)": (False, True)}


def throughput(args, device: torch.device) -> tuple[dict[str, float], float]:
    """Median samples/s of a solo fit under each of SETTINGS and of the plain loop (fit's own
    model), alternating round by round."""
    trial = sample_trials(1, args.seed)[0]
    fitted: dict[str, list[float]] = {name: [] for name in SETTINGS}
    plain = []
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, (channels_last, benchmark) in SETTINGS.items():
            dm = datamodule(args.data_dir, args.train_subset, 512, trial["seed"], args.val_size)
            clock, model = Clock(), build(trial, heads_of(dm), channels_last=channels_last)
            L.Trainer(**{**TRAINER, "accelerator": device.type, "benchmark": benchmark}, max_epochs=1,
                      callbacks=[clock]).fit(model, dm)
            fitted[name].append(len(dm.train_dataloader().index) / (clock.end - clock.start))
        torch.backends.cudnn.benchmark = False  # the plain loop as `fit`'s own settings have it
        batches = dm.train_dataloader()  # on the device, as the fits had them
        net = build(trial, heads_of(dm), channels_last=True).net.to(device)
        plain.append(len(batches.index) / plain_epoch(net, batches, trial["loss_weights"], trial["lr"]))
    def rate(v: list[float]) -> float:
        return statistics.median(v[1:] or v)  # with --rounds 0, the warm-up round's

    return {name: rate(v) for name, v in fitted.items()}, rate(plain)


def study_command(args, storage: Path) -> list[str]:
    """The study as a user runs it; on the CPU at the bench's tiny sizes, stacked 2 at a time (a
    CPU study's `auto` is 1) so the population engine runs in it too."""
    cmd = [sys.executable, str(ROOT / "studies" / f"{STUDY}.py"), "--n-trials", str(args.study_trials),
           "--no-progress", "--storage", str(storage), "--timeout", f"{args.study_timeout:g}"]
    if not args.cpu:
        return [*cmd, "--population", "auto", "trainer.max_epochs=3", "data.train_subset=10000"]
    tiny = [f"trainer.max_epochs={args.epochs}", f"data.train_subset={args.train_subset}",
            "data.verify=false", "trainer.accelerator=cpu"]
    if args.val_size:
        tiny.append(f"data.val_size={args.val_size}")
    return [*cmd, "--population", "2", *tiny]


def study_row(args, grace: float = 60) -> str:
    """The headline study as a subprocess: MNIST from --data-dir, stopped by its own --timeout at
    --study-timeout (it finishes the epochs under way), killed `grace` seconds later."""
    what = f"{args.study_trials}-trial {STUDY} study"
    missing = [m for m in ("optuna", "hydra") if importlib.util.find_spec(m) is None]
    if missing:
        return f"| {what} | needs {' and '.join(missing)}: pip install -e . | | | | |"
    with tempfile.TemporaryDirectory() as tmp:  # the trials' folders too (the working directory)
        storage = Path(tmp) / "study.journal"
        env = {**os.environ, "MHTRAIN_DATA_DIR": str(Path(args.data_dir).resolve()),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        try:  # the study's own --timeout stops it cleanly; this one only if that fails
            done = subprocess.run(study_command(args, storage), cwd=tmp, env=env, capture_output=True,
                                  text=True, timeout=args.study_timeout + grace)
        except subprocess.TimeoutExpired:
            return f"| {what} | killed after {args.study_timeout + grace:g} s | | | | |"
        wall = time.perf_counter() - start
        if done.returncode:
            why = (done.stderr.strip().splitlines() or ["?"])[-1].replace("|", "/")
            return f"| {what} | failed (exit {done.returncode}): {why} | | | | |"
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(storage))))
        states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        cut = " (stopped by --study-timeout)" if "stopped by --timeout" in done.stdout else ""
        best = f"{study.best_value:.4f}" if "complete" in states else "-"
        return (f"| {what} ({'population auto, 3 epochs, 10k' if not args.cpu else 'population 2'}) | "
                f"{wall:.0f}{cut} | {3600 * len(states) / wall:.0f} trials/h ({counts}) | {best} | | |")


def table(args, rates: dict[str, float], plain_rate: float, rows: list[dict], study: str) -> str:
    """The markdown table: one line per measurement."""
    lines = ["| run | wall s | trials/h (x solo) | best val/digit_acc | |member - solo| pp median / max "
             "| peak GPU memory |", "| --- | --- | --- | --- | --- | --- |"]
    names = list(rates)
    lines.append(f"| solo fit vs plain PyTorch loop | {rates[names[0]]:.0f} vs {plain_rate:.0f} samples/s "
                 f"({rates[names[0]] / plain_rate:.2f}) | | | | |")
    for before, name in zip(names, names[1:], strict=False):
        lines.append(f"| solo fit: {name} | {rates[name]:.0f} samples/s ({rates[name] / rates[before]:.2f}x "
                     "the row above) | | | | |")
    for r in rows:
        g = r["gaps"]
        gap = f"{statistics.median(g):.2f} / {g[-1]:.2f}" if g and r["k"] > 1 else "-"
        label = "K=1 (solo fits, population's settings)" if r["k"] == 1 else f"population K={r['k']}"
        lines.append(f"| {label} | {r['wall']:.1f} | {r['per_hour']:.0f} ({r['ratio']:.2f}x) | "
                     f"{r['best']:.4f} | {gap} | {r['mem']} |")
    lines.append(study)
    if rows and "rss" in rows[0]["mem"]:
        lines.append("\n* on the CPU: the process's peak RSS so far (it cannot be reset between K)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--cpu", action="store_true",
                    help="run every step on the CPU at tiny sizes unless given (its numbers mean nothing)")
    ap.add_argument("--study-trials", type=int, help="trials of the study row (default 50; --cpu 2)")
    ap.add_argument("--study-timeout", type=float, help="seconds before the study is stopped (default 240)")
    ap.add_argument("--rounds", type=int, help="timed rounds of samples/s after a warm-up (default 3)")
    ap.set_defaults(**GPU)
    cpu = "--cpu" in (sys.argv[1:] if argv is None else argv)
    if cpu:
        ap.set_defaults(**CPU)
    args = ap.parse_args(argv)
    quiet()
    if not torch.cuda.is_available() and not args.cpu:
        print("error: no CUDA GPU here; bench/gpu.py measures the GPU path (bench/population.py runs "
              "on any device; --cpu runs this script's every step on the CPU)", file=sys.stderr)
        raise SystemExit(2)
    if mnist.missing(args.data_dir):
        print(f"error: no MNIST under {args.data_dir}: set MHTRAIN_DATA_DIR or --data-dir",
              file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cpu" if args.cpu else "cuda")
    TRAINER["accelerator"] = device.type
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none (--cpu)"
    print(f"GPU: {gpu}; torch {torch.__version__}; lightning {L.__version__}; "
          f"{args.trials} trials x {args.epochs} epochs on {args.train_subset} images", flush=True)
    rates, plain_rate = throughput(args, device)
    rows = measure(args, device)
    print("\n" + table(args, rates, plain_rate, rows, study_row(args)), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
