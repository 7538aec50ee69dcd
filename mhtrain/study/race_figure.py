"""The race where researchers look: its figure and its verdict on the study's page in
optuna-dashboard (0.21 draws a stored figure in a 450 px high box on the study's first page,
beside the history plot; the note shows under the study's "Note" card)."""

from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go
from plotly.colors import qualitative

from mhtrain.study.race import Verdict

GRAPH_ID = "race"
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
    from optuna_dashboard import save_plotly_graph_object

    from mhtrain.study.untrusted import study_metric

    save_plotly_graph_object(ostudy, race_figure(verdict, study_metric(ostudy)), graph_object_id=GRAPH_ID)
