"""The end-of-run summary: what the study holds, its best trial, what the search cost, and how
the run ended (finished, timed out, interrupted, workers replaced)."""

from __future__ import annotations

import math
from collections import Counter
from shlex import quote

import optuna
from omegaconf import DictConfig

from mhtrain import program
from mhtrain.study import folders
from mhtrain.study.checkpoints import ARTIFACT_DIR, CHECKPOINT
from mhtrain.study.confirm import top_trials
from mhtrain.study.ledger import FINISHED
from mhtrain.study.records import OVER_BUDGET, trial_attr
from mhtrain.study.slurm import where
from mhtrain.study.warmstart import ATTR as WARM
from mhtrain.tracking import TRACKING, curves
from mhtrain.urls import masked


def _cold(ostudy: optuna.Study, first: optuna.trial.FrozenTrial) -> str:
    """The first trial of a fresh process also loads the data and builds what later trials
    reuse; say how much of the time to the best trial that one-off start-up was."""
    trained = trial_attr(ostudy, first, "seconds", fatal=False)
    if trained is None or first.datetime_complete is None:
        return ""
    start_up = (first.datetime_complete - first.datetime_start).total_seconds() - trained
    return f" ({start_up:.0f} s of it the first trial's start-up)" if start_up >= 1 else ""


def summary(ostudy: optuna.Study, max_epochs: int, storage_url: str, val_images: int | None = None) -> str:
    """Best value and params, trials by state, epochs used versus an unpruned search, time to
    the best trial. `max_epochs` serves trials that did not record their own; `val_images` gives
    the best's binomial error and the runner-up's gap in images. Every stored record is read
    through its schema: a broken one is a warning line and left out."""

    def attr(t: optuna.trial.FrozenTrial, name: str) -> object:
        return trial_attr(ostudy, t, name, fatal=False)

    trials = [t for t in ostudy.get_trials(deepcopy=False) if not attr(t, OVER_BUDGET)]
    by_state = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    epochs = sum(attr(t, "epochs") or 0 for t in finished)
    full = sum(attr(t, "max_epochs") or max_epochs for t in finished)
    lines = [f"study {ostudy.study_name}: {len(trials)} trials "
             f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(by_state.items())) or 'none run'})"]
    try:
        best = ostudy.best_trial
    except ValueError:
        lines.append("no completed trial yet")
    else:
        metric = (ostudy.metric_names or ["value"])[0]
        lines.append(f"best {metric} = {best.value:.4f} (trial {best.number})")
        lines += [f"  {k} = {v:.6g}" if isinstance(v, float) else f"  {k} = {v}"
                  for k, v in best.params.items()]
        lines += precision_lines(ostudy, val_images)
        started = sorted((t for t in trials if t.datetime_start), key=lambda t: t.datetime_start)
        if best.datetime_complete and started:
            seconds = (best.datetime_complete - started[0].datetime_start).total_seconds()
            lines.append(f"time to the best trial: {seconds:.0f} s of searching{_cold(ostudy, started[0])}")
    if full:
        lines.append(f"epochs used: {round(epochs, 2):g} of {full} an unpruned search would run "
                     f"({100 * epochs / full:.0f}%)")
    warm = [source for t in trials if (source := attr(t, WARM))]
    if warm:
        sources = ", ".join(quote(s) for s in sorted({s.rpartition("#")[0] for s in warm}))
        lines.append(f"warm-started: {len(warm)} trial(s) enqueued from {sources}")
    artifacts = folders.stored_folder(ostudy, ARTIFACT_DIR, storage_url)  # checked, as read before
    kept = sum(1 for t in trials if attr(t, CHECKPOINT))
    storage = quote(masked(storage_url))  # a password in the URL is never printed
    if kept:
        lines.append(f"checkpoints: {kept} kept in {quote(str(artifacts))}; "
                     f"`{program()} -m mhtrain.study export "
                     f"{quote(ostudy.study_name)} --storage {storage}` hands over the best")
    lines += where(ostudy, trials)  # hosts and SLURM tasks, when the study ran on more than one place
    lines += curves((attr(t, TRACKING), attr(t, "output_dir")) for t in trials)  # TensorBoard / MLflow
    # every command printed here names the storage it was run on: it works as typed
    lines.append(f"dashboard: {program('optuna-dashboard')} {storage}"
                 + (f" --artifact-dir {quote(str(artifacts))}" if artifacts else "")
                 + f"  (or `make dashboard STORAGE={storage}`)")
    return "\n".join(lines)


def val_images(cfg: DictConfig) -> int:
    """The images a trial is validated on: `data.val_subset` of them, else `data.val_size`."""
    return int(cfg.data.get("val_subset") or cfg.data.val_size)


def precision_lines(ostudy: optuna.Study, val_images: int | None) -> list[str]:
    """Without a confirmation: how precise the best value is, as one evaluation on the validation
    set (binomial SE), and how far the runner-up is, in images."""
    metric = (ostudy.metric_names or [""])[0]
    if not val_images or not metric.endswith("_acc"):
        return []
    ranked = top_trials(ostudy, 2)
    if len(ranked) < 2:
        return []
    best, runner = ranked
    se = math.sqrt(best.value * (1 - best.value) / val_images)
    gap = round(abs(best.value - runner.value) * val_images)
    return [f"  binomial SE of the best on {val_images:,} validation images: {100 * se:.2f} pp; "
            f"runner-up trial {runner.number} at {runner.value:.4f}, {gap} image(s) behind "
            f"(SE of a difference of two such evaluations: {100 * math.sqrt(2) * se:.2f} pp); "
            f"--confirm races the top on fresh seeds to tell them apart"]
