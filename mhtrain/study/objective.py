"""The objective: one trial = one composed config trained by `fit`, pruned epoch by epoch.

`trial_config` and `record` are the two halves a solo trial and a population member share;
`run_trial` asks, trains and tells one solo trial, mapping every outcome to a state in one place.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.study import checkpoints, interrupt, quiet_lightning
from mhtrain.study.space import StudyConfig
from mhtrain.study.storage import Heartbeat
from mhtrain.train import fit

quiet_lightning()

# How a trial runs, not what it trains: never the test split, no checkpoints, no epoch bars.
SEARCH_MODE = ["test=false", "callbacks.model_checkpoint=null", "++trainer.enable_checkpointing=false",
               "trainer.enable_progress_bar=false"]
OUTPUT_ROOT = "output_root"  # study user attribute: the folder that holds this study's trials
OVER_BUDGET = "over_budget"  # trial user attribute: asked in a race for the last slot, not run
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def report(trial: optuna.Trial, value: float, epoch: int) -> bool:
    """Report the value after `epoch` (from 0) and ask the pruner: True stops the trial. The step
    is the number of epochs trained, so a pruner's resources are epochs (`min_resource: 1` judges
    after the first), as bench/pruning.py measured them. Solo trials and population members
    report through this one function."""
    trial.report(value, step=epoch + 1)
    return trial.should_prune()


class PruningCallback(Callback):
    """Reports `metric` to the trial after each validation epoch; stops training cleanly when
    the pruner says so (the objective then raises TrialPruned, after `fit` has returned)."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if report(self.trial, float(trainer.callback_metrics[self.metric]), epoch):
            self.pruned_at = epoch
            trainer.should_stop = True


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, Linux): a pid is reused, this is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner() -> dict[str, Any]:
    """Who runs a trial: host, pid and the pid's start time, so a reaper never mistakes a
    recycled pid for the worker that started the trial."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid)}


def trial_values(study: StudyConfig, trial: optuna.Trial) -> list[str]:
    """What differs from trial to trial: the suggested values, the seed, the metric."""
    suggested = [f"++{p.key}={p.suggest(trial)}" for p in study.search_space]
    return [*suggested, f"seed={study.seed + trial.number}", f"optimized_metric={study.metric}"]


def trial_overrides(study: StudyConfig, trial: optuna.Trial) -> list[str]:
    """Everything that defines what the trial trains: re-running these reproduces it."""
    return [*study.overrides, *trial_values(study, trial)]


@functools.lru_cache(maxsize=8)
def _base(experiment: str, fixed: tuple[str, ...]) -> DictConfig:
    return compose(experiment, [*fixed, *SEARCH_MODE])


def search_base(study: StudyConfig) -> DictConfig:
    """What every trial's config starts from: the experiment, the study's fixed overrides and
    search mode, composed once per process (Hydra's compose is most of a trial's start-up)."""
    return _base(study.experiment, tuple(study.overrides))


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()  # builds a grammar: once per process, not per trial


def with_values(base: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A copy of `base` with value overrides (`key=v`, `++key=v`) applied as Hydra's compose
    applies them: the same parser gives the same typed values; `fit` then checks the result."""
    cfg = copy.deepcopy(base)
    try:
        for o in _parser().parse_overrides(list(overrides)):
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    return cfg


def trial_config(study: StudyConfig, trial: optuna.Trial) -> DictConfig:
    """Suggest the trial's values, record on it all that re-runs it, and return its search-mode
    config, writing to the trial's own folder inside its study's folder."""
    values = trial_values(study, trial)
    overrides = [*study.overrides, *values]
    output_dir = (Path(trial.study.user_attrs[OUTPUT_ROOT]) / f"trial_{trial.number:04d}").resolve()
    keeping = ["++trainer.enable_checkpointing=true"] if study.keep_checkpoints != "none" else []
    cfg = with_values(search_base(study), [*values, f"paths.output_dir={output_dir}", *keeping])
    for key, value in (("experiment", study.experiment),
                       ("overrides", overrides), ("seed", study.seed + trial.number),
                       ("output_dir", str(output_dir)), ("max_epochs", cfg.trainer.max_epochs)):
        trial.set_user_attr(key, value)
    return cfg


def record(study: StudyConfig, trial: optuna.Trial, result: Mapping[str, Any]) -> float:
    """Store what a finished run measured on its trial; return the objective value."""
    for key, value in result["best"].items():
        if key.endswith("_acc") or key == study.metric:
            trial.set_user_attr(f"best_{key}", value)
    trial.set_user_attr("epochs", result["epochs"])
    trial.set_user_attr("seconds", round(result["seconds"], 2))
    trial.set_user_attr("params", result["params"])
    return result["best"][study.metric]


def objective(study: StudyConfig, trial: optuna.Trial) -> float:
    """Train the trial's configuration; return the best `study.metric` over its epochs."""
    cfg = trial_config(study, trial)
    pruning = PruningCallback(trial, study.metric)
    saver = checkpoints.saver(study, cfg.paths.output_dir)
    result = fit(cfg, callbacks=[pruning, interrupt.StopOnRequest(), *([saver] if saver else [])])
    value = record(study, trial, result)
    checkpoints.keep(study, trial, saver, None if pruning.pruned_at is not None else value)
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    return value


def fail(ostudy: optuna.Study, trial: optuna.Trial) -> None:
    """Mark a trial FAIL unless someone (a reaper) already finished it."""
    with contextlib.suppress(RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        ostudy.tell(trial, state=TrialState.FAIL)


def over_budget(ostudy: optuna.Study, trial_number: int, n_trials: int) -> bool:
    """Whether a just-asked trial is one too many: processes that asked at the same moment each
    saw room for one more; the later-numbered ones step back (FAIL, marked, never trained)."""
    ahead = [t for t in ostudy.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
             if t.number <= trial_number]
    return len(ahead) > n_trials


def ask(ostudy: optuna.Study) -> optuna.Trial:
    """A new trial, its owner recorded at once: the reaper judges a RUNNING trial by its owner."""
    trial = ostudy.ask()
    trial.set_user_attr("owner", owner())
    return trial


def run_trial(study: StudyConfig, ostudy: optuna.Study, heartbeat: Heartbeat) -> TrialState:
    """Ask one trial, train it, tell its outcome: COMPLETE, PRUNED, or FAIL (then re-raise)."""
    trial = ask(ostudy)
    if over_budget(ostudy, trial.number, study.n_trials):
        trial.set_user_attr(OVER_BUDGET, True)
        fail(ostudy, trial)
        return TrialState.FAIL
    heartbeat.add([trial._trial_id])
    try:
        value = objective(study, trial)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        value, state = None, TrialState.PRUNED
    except BaseException:
        fail(ostudy, trial)
        raise
    finally:
        heartbeat.remove([trial._trial_id])
    ostudy.tell(trial, value, state=state)
    return state
