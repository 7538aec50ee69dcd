"""Train one configuration: `fit(cfg)` for code, `python -m mhtrain.train experiment=…` for people."""

from __future__ import annotations

import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mhtrain import one_line_errors
from mhtrain.config import build_model, check, compose
from mhtrain.models.module import best_of

# lightning 2.6 with torch 2.14 warns about its own pytree use on every fit; and metrics are
# logged per epoch, so a short epoch is no reason to warn about the step logging interval
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


class MetricHistory(Callback):
    """Keeps each validation epoch's metrics, so callers get the best epoch and not the last."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()
                                if k.startswith("val/")})

    def best(self) -> dict[str, float]:
        return best_of(self.epochs)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a config group; an entry set to null is switched off."""
    return [instantiate(c) for c in (group or {}).values() if c is not None]


def fit(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train one configuration (then test it unless `cfg.test` is false) and return its metrics.

    Returns `best` (per val metric over epochs), `final` (the last epoch's), `history`, `test`,
    `epochs`, `seconds`, `params` and the run's `output_dir`.
    """
    check(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg)
    heads = model.head_names
    history = MetricHistory()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*_instantiate_all(cfg.get("callbacks")), history, *callbacks],
        logger=_instantiate_all(cfg.get("logger")) or False,
    )
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero and not trainer.fast_dev_run:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "best": history.best(),
        "final": history.epochs[-1] if history.epochs else {},
        "history": history.epochs,
        "epochs": len(history.epochs),
        "seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "heads": list(heads),
        "output_dir": str(output_dir),
        "test": {},
    }
    if cfg.get("test"):
        ckpt = trainer.checkpoint_callback
        best_path = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        result["test"] = {k: float(v) for k, v in trainer.callback_metrics.items()
                          if k.startswith("test/")}
    return result


def summary_table(result: dict[str, Any]) -> str:
    """head | best val acc | test acc, as a small text table."""
    rows = [("head", "best val acc", "test acc")]
    for h in result["heads"]:
        val = result["best"].get(f"val/{h}_acc")
        test = result["test"].get(f"test/{h}_acc")
        rows.append((h, f"{val:.4f}" if val is not None else "-",
                     f"{test:.4f}" if test is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    outcome: dict[str, Any] = {}
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        code = one_line_errors(lambda: outcome.update(fit(cfg)))
    except SystemExit:  # Lightning ends a Ctrl-C with exit(1) after its graceful shutdown
        if not interrupted:
            raise
        print("interrupted", file=sys.stderr)
        code = 130
    if code:
        sys.exit(code)
    return report(cfg, outcome)


def report(cfg: DictConfig, result: dict[str, Any]) -> float | None:
    """Print a run's table and where it was saved; return the optimized metric (for sweepers)."""
    accs = "  ".join(f"val/{h}_acc={result['best'][f'val/{h}_acc']:.4f}" for h in result["heads"])
    saved = "nothing saved (fast_dev_run)" if cfg.trainer.get("fast_dev_run") else (
        f"run saved in {result['output_dir']}")
    print(f"\n{summary_table(result)}\nbest {accs}\n"
          f"{result['epochs']} epochs in {result['seconds']:.1f} s; {saved}")
    return result["best"].get(cfg.get("optimized_metric"))


def precheck(argv: Sequence[str]) -> int:
    """Compose and check the command line's config before Hydra creates the run folder, so a
    bad value is one line and exit 2 with nothing written (Hydra's own flags are left to it)."""
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra.")]
    if len(overrides) != len(argv):
        return 0
    return one_line_errors(lambda: compose(None, overrides) and 0)


if __name__ == "__main__":
    if code := precheck(sys.argv[1:]):
        sys.exit(code)
    main()
