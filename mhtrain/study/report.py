"""The comparison report: Plotly figures in one HTML page and the same story in Markdown."""

from __future__ import annotations

from pathlib import Path

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import TrialState

from mhtrain.study.compare import Verdict


def _figures(multitask: optuna.Study, single: optuna.Study, v: Verdict) -> list[tuple[str, go.Figure]]:
    figs = [("Optimization history (both studies)",
             vis.plot_optimization_history([multitask, single], target_name=v.metric.replace("test", "val")))]
    for s in (multitask, single):
        figs.append((f"Intermediate values per epoch: {s.study_name}", vis.plot_intermediate_values(s)))
    for s in (multitask, single):
        if len(_params(s)) > 1:  # with one parameter its importance is 1.0 by definition
            figs.append((f"Parameter importances: {s.study_name}", vis.plot_param_importances(s)))
    weights = [p for p in _params(multitask) if "loss_weights" in p]
    if len(weights) >= 2:
        figs.append(("Loss-weight landscape", vis.plot_contour(multitask, params=weights[:2])))
    elif _params(multitask):
        figs.append((f"Objective by parameter: {multitask.study_name}", vis.plot_slice(multitask)))
    seeds = go.Figure()
    for name, values in ((multitask.study_name, v.multitask), (single.study_name, v.single)):
        seeds.add_trace(go.Box(y=[100 * x for x in values], name=name, boxpoints="all", jitter=0.3))
    seeds.update_layout(yaxis_title=f"{v.metric} (%)", showlegend=False)
    figs.append(("Test accuracy per seed (best configuration re-trained)", seeds))
    return figs


def _params(study: optuna.Study) -> list[str]:
    return sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})


def _study_table(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = study.best_trial
    lines = [f"### {study.study_name}", "",
             f"- experiment: `{best.user_attrs.get('experiment')}`",
             f"- trials: {', '.join(f'{n} {s}' for s, n in states.items() if n)}",
             f"- best val value: {best.value:.4f} (trial {best.number})"]
    lines += [f"- `{k}` = {v:.6g}" if isinstance(v, float) else f"- `{k}` = {v}"
              for k, v in best.params.items()]
    return [*lines, ""]


def write(out_dir: Path, multitask: optuna.Study, single: optuna.Study, v: Verdict) -> tuple[Path, Path]:
    """Write report.html (interactive figures) and report.md (verdict, tables); return both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = _figures(multitask, single, v)
    parts = [f"<h1>{multitask.study_name} vs {single.study_name}</h1><p><b>{v.sentence()}</b></p>"]
    for i, (title, fig) in enumerate(figs):
        parts.append(f"<h2>{title}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    html = out_dir / "report.html"
    html.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                    f"<title>{multitask.study_name} vs {single.study_name}</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    rows = [f"| {seed} | {100 * a:.2f} | {100 * b:.2f} |"
            for seed, a, b in zip(v.seeds, v.multitask, v.single, strict=True)]
    md = [f"# {multitask.study_name} vs {single.study_name}", "", f"**Verdict.** {v.sentence()}", "",
          "## Best configurations", "", *_study_table(multitask), *_study_table(single),
          f"## {v.metric} per seed (%)", "",
          f"| seed | {multitask.study_name} | {single.study_name} |", "|---|---|---|", *rows, "",
          f"Figures (optimization histories, intermediate values, importances, landscape): "
          f"[report.html](report.html): {', '.join(t for t, _ in figs)}.", ""]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(md))
    return report_md, html
