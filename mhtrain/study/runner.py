"""Create or resume a study and run it to its total trial budget, with one progress bar."""

from __future__ import annotations

import gc
import time
from collections import Counter
from functools import partial

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from mhtrain import ConfigError
from mhtrain.study.objective import objective
from mhtrain.study.space import StudyConfig
from mhtrain.study.storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES = 3  # failed trials in one process before the run gives up


def make_sampler(study: StudyConfig) -> optuna.samplers.BaseSampler:
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=study.seed)
    if study.sampler == "grid":
        grid = {p.key: p.grid() for p in study.search_space}
        return optuna.samplers.GridSampler(grid, seed=study.seed)
    return optuna.samplers.TPESampler(seed=study.seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(2, study.n_trials // 3)))


def make_pruner(study: StudyConfig) -> optuna.pruners.BasePruner:
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[study.pruner]()


def open_study(study: StudyConfig, storage_url: str) -> optuna.Study:
    """Create the study, or load it if it exists, refusing one made for another direction or
    metric: resuming it would mix incomparable values."""
    storage = open_storage(storage_url)
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        old = existing.user_attrs.get("config", {})
        theirs = (old.get("experiment"), old.get("metric"), existing.direction.name.lower())
        ours = (study.experiment, study.metric, study.direction)
        if theirs != ours:
            raise ConfigError(
                f"study {study.name} in {storage_url} is {theirs[0]} optimizing {theirs[1]} "
                f"({theirs[2]}), not {ours[0]} optimizing {ours[1]} ({ours[2]}); "
                "pick another --study-name")
    ostudy = optuna.create_study(storage=storage, study_name=study.name, direction=study.direction,
                                 sampler=make_sampler(study), pruner=make_pruner(study),
                                 load_if_exists=True)
    if existing is None:
        ostudy.set_metric_names([study.metric])
    ostudy.set_user_attr("config", study.to_dict())
    return ostudy


def counts(ostudy: optuna.Study) -> Counter:
    return Counter(t.state for t in ostudy.get_trials(deepcopy=False))


def run(study: StudyConfig, storage_url: str, timeout: float | None = None,
        progress: bool = True) -> optuna.Study:
    """Run trials until the study holds `study.n_trials` finished (complete or pruned) trials,
    counting those other workers are running, so the budget holds across processes."""
    ostudy = open_study(study, storage_url)
    start = time.monotonic()
    state = counts(ostudy)
    done = state[TrialState.COMPLETE] + state[TrialState.PRUNED]
    bar = tqdm(total=study.n_trials, initial=min(done, study.n_trials), desc=study.name,
               unit="trial", disable=not progress, dynamic_ncols=True)
    func = partial(objective, study)
    failures = 0
    try:
        while True:
            state = counts(ostudy)
            done = state[TrialState.COMPLETE] + state[TrialState.PRUNED]
            bar.n = min(done, study.n_trials)
            bar.set_postfix(best=_best(ostudy), pruned=state[TrialState.PRUNED], refresh=True)
            if done + state[TrialState.RUNNING] >= study.n_trials:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                break
            # n_trials=1 per call: optuna then handles heartbeats and stale trials for us
            try:
                ostudy.optimize(func, n_trials=1)
            except (ConfigError, optuna.exceptions.StorageInternalError):
                raise
            except Exception as e:  # noqa: BLE001 - one odd trial (already marked FAIL) is survivable
                failures += 1
                tqdm.write(f"trial failed: {type(e).__name__}: {e}")
                if failures >= MAX_FAILURES:
                    raise
            gc.collect()
    finally:
        bar.close()
    return ostudy


def _best(ostudy: optuna.Study) -> str:
    try:
        return f"{ostudy.best_value:.4f}"
    except ValueError:
        return "-"


def summary(ostudy: optuna.Study, max_epochs: int, storage_url: str) -> str:
    """Best value and params, trials by state, epochs used versus an unpruned search."""
    trials = ostudy.get_trials(deepcopy=False)
    by_state = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    epochs = sum(t.user_attrs.get("epochs", 0) for t in finished)
    full = len(finished) * max_epochs
    lines = [f"study {ostudy.study_name}: {len(trials)} trials "
             f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(by_state.items()))})"]
    try:
        best = ostudy.best_trial
        metric = (ostudy.metric_names or ["value"])[0]
        lines.append(f"best {metric} = {best.value:.4f} (trial {best.number})")
        lines += [f"  {k} = {v:.6g}" if isinstance(v, float) else f"  {k} = {v}"
                  for k, v in best.params.items()]
    except ValueError:
        lines.append("no completed trial yet")
    if full:
        lines.append(f"epochs used: {epochs} of {full} an unpruned search would run "
                     f"({100 * epochs / full:.0f}%)")
    lines.append(f"dashboard: optuna-dashboard {storage_url}  (or `make dashboard`)")
    return "\n".join(lines)
