"""The comparison's figures. A figure that cannot mean anything with the trials at hand (a
contour through three points, importances from two trials) is left out with one line saying
why, and nothing Optuna or its estimators say while drawing reaches the console: a warning
while drawing a figure leaves that figure out, quoting the warning as the reason."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import TrialState

from mhtrain.evaluate.document import Figure
from mhtrain.evaluate.reruns import Arm
from mhtrain.evaluate.stats import plural
from mhtrain.study.dashboard_figures import study_lineage
from mhtrain.study.replay import is_pbt

MIN_COMPLETE = 10  # completed trials (the only ones importances and contours use) needed to say anything


@contextmanager
def captured() -> Iterator[list[str]]:
    """Collect (instead of printing) Python warnings and Optuna's log warnings."""
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger = logging.getLogger("optuna")
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [Keep(logging.WARNING)], False
    logger.setLevel(min(level or logging.WARNING, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield said
        said += [str(w.message) for w in caught]
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


def drawn(title: str, make: Callable[[], go.Figure]) -> Figure:
    """The figure `make` draws, or the line saying why not if drawing it raised a warning."""
    with captured() as said:
        fig = make()
    if said:
        return Figure(title, left_out=f"Optuna warned while drawing it ({said[0].strip().rstrip('.')})")
    return Figure(title, fig)


def importances(study: optuna.Study) -> Figure:
    """Which searched values mattered, when the completed trials can say so."""
    title = f"Parameter importances: {study.study_name}"
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < MIN_COMPLETE:
        return Figure(title, left_out=f"{plural(n, 'completed trial')}, fewer than "
                                      f"the {MIN_COMPLETE} an importance estimate needs")
    with captured() as said:
        values = optuna.importance.get_param_importances(study)
    if said or len({round(v, 6) for v in values.values()}) < 2:
        return Figure(title, left_out=f"the {n} completed trials cannot tell the parameters apart "
                                      "(every importance is equal)")
    fig = go.Figure(go.Bar(x=list(values.values())[::-1], y=list(values)[::-1], orientation="h"))
    fig.update_layout(xaxis_title="importance (PED-ANOVA, Optuna's default)", height=120 + 40 * len(values))
    return Figure(title, fig)


def landscape(study: optuna.Study, params: list[str]) -> Figure:
    """The objective over two searched loss weights, when there are points enough to draw it."""
    title = f"Loss-weight landscape: {study.study_name}"
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < MIN_COMPLETE:
        return Figure(title, left_out=f"{plural(n, 'completed trial')}; a contour "
                                      f"interpolated from fewer than {MIN_COMPLETE} points shows nothing")
    return drawn(title, lambda: vis.plot_contour(study, params=params))


def comparison_figures(arms: list[Arm], metric: str) -> list[Figure]:
    """Per-seed accuracies, loss weights, each study's history, and what the trials allow."""
    seeds = go.Figure([go.Box(y=[100 * v for v in a.values(metric)], name=a.name, boxpoints="all",
                              jitter=0.3, text=[f"seed {s}" for s in a.seeds]) for a in arms])
    seeds.update_layout(yaxis_title=f"{metric} (%)", showlegend=False)  # the spread behind each mean
    figs = [Figure("Test accuracy per seed (best configurations re-trained)", seeds)]
    weights = go.Figure()  # each head's loss weight per epoch, mean over seeds; dotted where it never changed
    for a in arms:
        for h in a.heads if len(a.heads) > 1 else []:
            runs = [w for w in a.weights(h) if w]
            epochs = max((len(w) for w in runs), default=0)
            mean = [sum(w[e] for w in runs if len(w) > e) / sum(len(w) > e for w in runs)
                    for e in range(epochs)]
            learned = len({round(v, 9) for w in runs for v in w}) > 1
            weights.add_trace(go.Scatter(x=list(range(1, epochs + 1)), y=mean, name=f"{a.name}: {h}",
                                         mode="lines+markers", line={"dash": "solid" if learned else "dot"}))
    if weights.data:
        weights.update_layout(xaxis_title="epoch", yaxis_title="loss weight (mean over seeds)")
        figs.append(Figure("Loss weights over epochs (dotted: fixed)", weights))
    studies = [a.study for a in arms]
    figs.append(drawn("Optimization history (each arm's study)", lambda: vis.plot_optimization_history(
        studies, target_name=metric.replace("test/", "val/", 1))))
    for s in studies:
        figs.append(drawn(f"Intermediate values per epoch: {s.study_name}",
                          lambda s=s: vis.plot_intermediate_values(s)))
        if is_pbt(s):  # who copied whom, when, and each member's schedule
            figs.append(Figure(f"PBT lineage: {s.study_name}", study_lineage(s)))
    for s in studies:
        params = sorted({p for t in s.get_trials(deepcopy=False) for p in t.params})
        if len(params) > 1:  # with one parameter its importance is 1.0 by definition
            figs.append(importances(s))
        searched = [p for p in params if "loss_weights" in p]
        if len(searched) >= 2:
            figs.append(landscape(s, searched[:2]))
    return figs
