"""The end-of-run summary: what the study holds, its best trial, what the search cost, and how
the run ended (finished, timed out, interrupted, workers replaced)."""

from __future__ import annotations

from collections import Counter
from shlex import quote

import optuna

from mhtrain.study.checkpoints import ARTIFACT_DIR, CHECKPOINT
from mhtrain.study.confirm import precision_lines
from mhtrain.study.ledger import FINISHED
from mhtrain.study.lifecycle import OVER_BUDGET
from mhtrain.study.slurm import where
from mhtrain.study.warmstart import ATTR as WARM
from mhtrain.tracking import curves


def _cold(first: optuna.trial.FrozenTrial) -> str:
    """The first trial of a fresh process also loads the data and builds what later trials
    reuse; say how much of the time to the best trial that one-off start-up was."""
    trained = first.user_attrs.get("seconds")
    if trained is None or first.datetime_complete is None:
        return ""
    start_up = (first.datetime_complete - first.datetime_start).total_seconds() - trained
    return f" ({start_up:.0f} s of it the first trial's start-up)" if start_up >= 1 else ""


def summary(ostudy: optuna.Study, max_epochs: int, storage_url: str, val_images: int | None = None) -> str:
    """Best value and params, trials by state, epochs used versus an unpruned search, time to
    the best trial. `max_epochs` serves trials that did not record their own; `val_images` gives
    the best's binomial error and the runner-up's gap in images."""
    trials = [t for t in ostudy.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)]
    by_state = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    epochs = sum(t.user_attrs.get("epochs", 0) for t in finished)
    full = sum(t.user_attrs.get("max_epochs", max_epochs) for t in finished)
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
            lines.append(f"time to the best trial: {seconds:.0f} s of searching{_cold(started[0])}")
    if full:
        lines.append(f"epochs used: {round(epochs, 2):g} of {full} an unpruned search would run "
                     f"({100 * epochs / full:.0f}%)")
    sources = sorted({str(t.user_attrs[WARM]).rpartition("#")[0] for t in trials if WARM in t.user_attrs})
    if sources:
        warm = sum(1 for t in trials if WARM in t.user_attrs)
        lines.append(f"warm-started: {warm} trial(s) enqueued from {', '.join(sources)}")
    artifacts = ostudy.user_attrs.get(ARTIFACT_DIR)
    kept = sum(1 for t in trials if CHECKPOINT in t.user_attrs)
    if kept:
        lines.append(f"checkpoints: {kept} kept in {artifacts}; `python -m mhtrain.study export "
                     f"{quote(ostudy.study_name)} --storage {quote(storage_url)}` hands over the best")
    lines += where(trials)  # hosts and SLURM tasks, when the study ran on more than one place
    lines += curves(trials)  # TensorBoard / MLflow, when a trial logged there
    # every command printed here names the storage it was run on: it works as typed
    lines.append(f"dashboard: optuna-dashboard {quote(storage_url)}"
                 + (f" --artifact-dir {quote(str(artifacts))}" if artifacts else "")
                 + f"  (or `make dashboard STORAGE={quote(storage_url)}`)")
    return "\n".join(lines)
