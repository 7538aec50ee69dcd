"""A PBT study's lineage as one figure: each member's curve, a dashed link from the member it
copied to where it went on, and each searched value's schedule below. Stored on the study for
optuna-dashboard (its Plots tab) when a PBT run ends."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from mhtrain.study.pbt import SCHEDULE

GRAPH_ID = "pbt_lineage"  # its id among the dashboard's study plots (stored again each run)


def lineage_figure(trials: Sequence[optuna.trial.FrozenTrial], metric: str, keys: Sequence[str],
                   log_keys: Sequence[str] = ()) -> go.Figure:
    """Members (trials with a `pbt_schedule`) by epochs trained: `metric`, then each of `keys`."""
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
        schedule = t.user_attrs[SCHEDULE]
        for seg in schedule[1:]:  # a copy after `epoch` epochs: from its parent's point to its next
            parent, e = curves.get(seg["parent"], {}), seg["epoch"]
            p = seg.get("parent_epoch", e)  # the parent's epochs then (it may have joined earlier)
            if p in parent and e + 1 in curves[t.number]:
                fig.add_trace(go.Scatter(
                    x=[p, e + 1], y=[parent[p], curves[t.number][e + 1]], mode="lines",
                    line={"color": color, "dash": "dot"}, legendgroup=name, showlegend=False,
                    hovertext=f"{name} copied trial {seg['parent']} after epoch {e}", hoverinfo="text"),
                    row=1, col=1)
        end = max(steps, default=0)
        for row, key in enumerate(keys, start=2):  # a value holds from its segment's start on
            x = [seg["epoch"] for seg in schedule] + [end]
            y = [seg[key] for seg in schedule] + [schedule[-1][key]]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": color, "shape": "hv"},
                                     name=name, legendgroup=name, showlegend=False), row=row, col=1)
    for row, key in enumerate(keys, start=2):
        if key in log_keys:
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="epochs trained", row=1 + len(keys), col=1)
    fig.update_layout(title="PBT lineage: dotted = copied the state of that member",
                      height=300 * (1 + len(keys)), template="plotly_white")
    return fig


def store_lineage(ostudy: optuna.Study, metric: str, keys: Sequence[str],
                  log_keys: Sequence[str] = ()) -> None:
    """Draw the study's lineage and store it where optuna-dashboard shows it."""
    from optuna_dashboard import save_plotly_graph_object

    fig = lineage_figure(ostudy.get_trials(deepcopy=False), metric, keys, log_keys)
    save_plotly_graph_object(ostudy, fig, graph_object_id=GRAPH_ID)
