"""Train one configuration: `fit(cfg)` for code, `python -m mhtrain.train experiment=…` for people."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mhtrain import one_line_errors, quiet
from mhtrain.config import build_model, check, compose, instantiate_all, prepare_data
from mhtrain.result import FitResult


class MetricHistory(Callback):
    """Keeps each epoch's val and train metrics, so callers get the best epoch and not the last.

    Train metrics are logged by the module's own `on_train_epoch_end`, after the callbacks'
    turn, so an epoch's train row is taken when the next epoch starts or training ends."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.train: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs.append(_metrics(trainer, "val/"))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.train) < trainer.current_epoch and (row := _metrics(trainer, "train/")):
            self.train.append(row)

    on_train_end = on_train_epoch_start


def _metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Built:
    """The objects one configuration trains with, as `build` makes them (a benchmark or an
    evaluation uses them directly; `fit` trains them)."""

    cfg: DictConfig
    datamodule: L.LightningDataModule
    model: L.LightningModule
    trainer: L.Trainer
    history: MetricHistory


def build(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> Built:
    """Check `cfg`, seed, and instantiate its datamodule, model and Trainer (with `callbacks`)."""
    check(cfg)
    quiet()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    history = MetricHistory()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_all(cfg.get("callbacks")), history, *callbacks],
        logger=instantiate_all(cfg.get("logger")) or False,
    )
    return Built(cfg, instantiate(cfg.data), build_model(cfg), trainer, history)


def _stopped(trainer: L.Trainer, epochs: int, max_epochs: int) -> str:
    """Why training ended: a callback that stopped it says so in `stop_reason` (the pruning
    callback says `pruned`); Lightning's EarlyStopping records its epoch."""
    for cb in trainer.callbacks:
        if getattr(cb, "stop_reason", None):
            return cb.stop_reason
        if isinstance(cb, EarlyStopping) and cb.stopped_epoch:
            return "early_stopping"
    return "max_epochs" if epochs >= max_epochs else "stopped"


def fit(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train one configuration (then test it unless `cfg.test` is false) and return what it
    measured; `build` makes the objects it trains."""
    b = build(cfg, callbacks)
    trainer, model = b.trainer, b.model
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero and not trainer.fast_dev_run:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    # a checkpoint is data (checked by `check`): tensors and plain containers only, never code
    trainer.fit(model, datamodule=b.datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    seconds = time.perf_counter() - start
    ckpt = trainer.checkpoint_callback
    best_path = (ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else "") or None
    test: dict[str, float] = {}
    if cfg.get("test"):
        trainer.test(model, datamodule=b.datamodule, ckpt_path=best_path, verbose=False, weights_only=True)
        test = _metrics(trainer, "test/")
    per_epoch = trainer.num_training_batches
    trained = ((trainer.fit_loop.epoch_loop.total_batch_idx + 1) / per_epoch
               if 0 < per_epoch < float("inf") else None)
    return FitResult(history=b.history.epochs, train_history=b.history.train, test=test,
                     seconds=seconds, params=sum(p.numel() for p in model.parameters()),
                     heads=model.head_names, output_dir=str(output_dir), checkpoint=best_path,
                     stopped=_stopped(trainer, len(b.history.epochs), cfg.trainer.max_epochs),
                     trained=trained)


def summary_table(result: FitResult) -> str:
    """head | best val acc | test acc, as a small text table."""
    rows = [("head", "best val acc", "test acc")]
    for h in result.heads:
        accs = (result.best.get(f"val/{h}_acc"), result.test.get(f"test/{h}_acc"))
        rows.append((h, *("-" if acc is None else f"{acc:.4f}" for acc in accs)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    outcome: list[FitResult] = []
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        code = one_line_errors(lambda: outcome.append(fit(cfg)))
    except SystemExit:  # Lightning ends a Ctrl-C with exit(1) after its graceful shutdown
        if not interrupted:
            raise
        print("interrupted", file=sys.stderr)
        code = 130
    if code:
        sys.exit(code)
    return report(cfg, outcome[0])


def report(cfg: DictConfig, result: FitResult) -> float | None:
    """Print a run's table and where it was saved; return the optimized metric (for sweepers)."""
    accs = "  ".join(f"val/{h}_acc={result.best[f'val/{h}_acc']:.4f}" for h in result.heads)
    saved = "nothing saved (fast_dev_run)" if cfg.trainer.get("fast_dev_run") else (
        f"run saved in {result.output_dir}")
    print(f"\n{summary_table(result)}\nbest {accs}\n"
          f"{result.epochs} epochs in {result.seconds:.1f} s; {saved}")
    return result.best.get(cfg.get("optimized_metric"))


def precheck(argv: Sequence[str]) -> int:
    """Compose and check the command line's config and its data before Hydra creates the run
    folder, so a bad value is one line and exit 2 with nothing written (Hydra's own flags are left to it)."""
    overrides = [a for a in argv if not a.startswith(("-", "hydra."))]
    if len(overrides) != len(argv):
        return 0
    return one_line_errors(lambda: prepare_data(compose(None, overrides)) and 0)


if __name__ == "__main__":
    if code := precheck(sys.argv[1:]):
        sys.exit(code)
    main()
