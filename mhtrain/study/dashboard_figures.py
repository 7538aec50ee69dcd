"""The figures a study stores where researchers look, on its first page in optuna-dashboard (0.21
draws a stored figure in a 450 px high box beside the history plot; the note shows under the
study's "Note" card): the confirmation race with its verdict, and a PBT study's lineage (each
member's curve, a dashed link from the member it copied to where it went on, and each searched
value's schedule below)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import plotly.graph_objects as go
from optuna_dashboard import save_plotly_graph_object
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from mhtrain.pbt import SCHEDULE
from mhtrain.study.race import Verdict
from mhtrain.study.replay import segments
from mhtrain.study.untrusted import searched, study_metric

RACE = "race"  # the figures' ids among the dashboard's study plots (stored again each run)
LINEAGE = "pbt_lineage"
HEIGHT = 440  # px: inside the dashboard's 450 px box, so no panel is cut off


def race_figure(verdict: Verdict, metric: str) -> go.Figure:
    """Each finalist's difference to the round's leader, with its anytime-valid interval, round by
    round (unbounded rounds left out); a cross where a finalist was dropped; the equivalence band."""
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, arm in enumerate(verdict.arms):
        rounds = [(r + 1, now[arm]) for r, now in enumerate(verdict.history) if arm in now]
        shown = [(r, lo, hi) for r, (lo, hi) in rounds if math.isfinite(lo) and math.isfinite(hi)]
        color = palette[i % len(palette)]
        mid = [(lo + hi) / 2 for _, lo, hi in shown]
        half = [(hi - lo) / 2 for _, lo, hi in shown]
        fig.add_trace(go.Scatter(x=[r for r, _, _ in shown], y=mid, mode="lines+markers", name=arm,
                                 line={"color": color}, error_y={"type": "data", "array": half}))
        if arm in verdict.eliminated and shown:
            fig.add_trace(go.Scatter(x=[shown[-1][0]], y=[mid[-1]], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 14, "color": color},
                                     hovertext=f"{arm} dropped after round {verdict.eliminated[arm]}",
                                     hoverinfo="text"))
    fig.add_hrect(y0=-verdict.delta, y1=verdict.delta, fillcolor="grey", opacity=0.15, line_width=0)
    fig.update_layout(title=f"Race: {metric} minus the round's leader ({verdict.headline()[:60]})",
                      xaxis_title="round (one fresh seed each)", yaxis_title="difference",
                      height=HEIGHT, template="plotly_white", margin={"l": 50, "r": 10, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def note(verdict: Verdict, metric: str) -> str:
    """The verdict as the study's note (Markdown)."""
    lines = verdict.lines(metric)
    return "\n".join([f"**{verdict.headline()}**", "", "```", *lines, "```"])


def store_figure(ostudy: optuna.Study, verdict: Verdict) -> None:
    """Store the race's figure where optuna-dashboard shows it (the study's first page)."""
    save_plotly_graph_object(ostudy, race_figure(verdict, study_metric(ostudy)), graph_object_id=RACE)


def lineage_figure(trials: Sequence[optuna.trial.FrozenTrial], metric: str, keys: Sequence[str],
                   log_keys: Sequence[str] = (), study: str = "") -> go.Figure:
    """Members (trials with a `pbt_schedule`, checked: a malformed one is refused in one line) by
    epochs trained: `metric`, then each of `keys`."""
    members = [t for t in trials if SCHEDULE in t.user_attrs]
    curves = {t.number: t.intermediate_values for t in members}
    fig = make_subplots(rows=1 + len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[metric, *keys])
    palette = qualitative.Plotly
    for n, t in enumerate(members):
        color, name = palette[n % len(palette)], f"trial {t.number}"
        steps = sorted(curves[t.number])
        fig.add_trace(go.Scatter(x=steps, y=[curves[t.number][s] for s in steps], mode="lines+markers",
                                 name=name, legendgroup=name, line={"color": color}), row=1, col=1)
        schedule = segments(t, keys, study)
        for seg in schedule[1:]:  # a copy after `epoch` epochs: from its parent's point to its next
            # p: the parent's epochs at the copy (it may have joined earlier)
            parent, e, p = curves.get(seg["parent"], {}), seg["epoch"], seg["parent_epoch"]
            if p in parent and e + 1 in curves[t.number]:
                fig.add_trace(go.Scatter(
                    x=[p, e + 1], y=[parent[p], curves[t.number][e + 1]], mode="lines",
                    line={"color": color, "dash": "dot"}, legendgroup=name, showlegend=False,
                    hovertext=f"{name} copied trial {seg['parent']} after epoch {e}", hoverinfo="text"),
                    row=1, col=1)
        end = max(steps, default=0)
        for row, key in enumerate(keys, start=2):  # a value holds from its segment's start on
            x = [seg["epoch"] for seg in schedule] + [end]
            y = [seg["values"][key] for seg in schedule] + [schedule[-1]["values"][key]]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": color, "shape": "hv"},
                                     name=name, legendgroup=name, showlegend=False), row=row, col=1)
    for row, key in enumerate(keys, start=2):
        if key in log_keys:
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="epochs trained", row=1 + len(keys), col=1)
    fig.update_layout(title="PBT lineage: dotted = copied the state of that member",
                      height=300 * (1 + len(keys)), template="plotly_white")
    return fig


def study_lineage(ostudy: optuna.Study) -> go.Figure:
    """A stored PBT study's lineage figure: its searched keys (log axes where searched on a log
    scale) from its recorded config, its metric from the study."""
    space = searched(ostudy)
    log_keys = [k for k, spec in space.items() if spec.get("log") is True]
    return lineage_figure(ostudy.get_trials(deepcopy=False), study_metric(ostudy), list(space), log_keys,
                          ostudy.study_name)


def store_lineage(ostudy: optuna.Study) -> None:
    """Draw the study's lineage and store it where optuna-dashboard shows it."""
    fig = study_lineage(ostudy).update_layout(height=HEIGHT, margin={"l": 50, "r": 10, "t": 50, "b": 40})
    save_plotly_graph_object(ostudy, fig, graph_object_id=LINEAGE)
