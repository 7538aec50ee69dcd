"""The comparison report: the same tables and verdicts in Markdown (to quote) and in one HTML page
with the Plotly figures (to explore)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import TrialState

from mhtrain.study.compare import LEVEL, Arm, Contrast, mean_ci, reference_sentence

Table = list[list[str]]  # header row first


@dataclass(frozen=True)
class Comparison:
    """Everything a report shows: the re-trained arms, the reference and the contrasts."""

    arms: list[Arm]
    reference: Arm
    metric: str
    contrasts: list[Contrast]
    extra: list[str] = field(default_factory=list)  # the re-runs' fidelity overrides

    def sentences(self) -> list[str]:
        return [c.sentence() for c in self.contrasts] + [reference_sentence(self.reference, self.metric)]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def accuracy_table(c: Comparison) -> Table:
    """Arm by arm, the mean test accuracy of every head with its confidence interval."""
    heads = list(dict.fromkeys(h for a in c.arms for h in a.heads))
    rows = [["arm", "seeds", *(f"test {h} acc (%)" for h in heads)]]
    for a in c.arms:
        cells = []
        for h in heads:
            if h not in a.heads:
                cells.append("–")
                continue
            mean, low, high = mean_ci(a.values(f"test/{h}_acc"))
            cells.append(f"{_pct(mean)} [{_pct(low)}, {_pct(high)}]")
        rows.append([a.name + (" (reference)" if a is c.reference else ""), str(len(a.records)), *cells])
    return rows


def contrast_table(c: Comparison) -> Table:
    rows = [["arm", "difference (pp)", f"{100 * LEVEL:.0f}% CI (pp)", "Welch p", "Holm-adjusted p"]]
    for x in c.contrasts:
        rows.append([x.arm, f"{100 * x.diff:+.2f}", f"{100 * x.low:+.2f} to {100 * x.high:+.2f}",
                     f"{x.p:.3g}", f"{x.p_holm:.3g}"])
    return rows


def seed_table(c: Comparison) -> Table:
    rows = [["seed", *(a.name for a in c.arms)]]
    for i, seed in enumerate(c.reference.seeds):
        rows.append([str(seed), *(_pct(a.values(c.metric)[i]) for a in c.arms)])
    return rows


def _markdown(t: Table) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in t[:1]] + ["|" + "---|" * len(t[0])] + [
        "| " + " | ".join(r) + " |" for r in t[1:]]


def _html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(x)}</th>" for x in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in t[1:])
    return f"<table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>"


def _params(study: optuna.Study) -> list[str]:
    return sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})


def _figures(c: Comparison) -> list[tuple[str, go.Figure]]:
    seeds = go.Figure()
    for a in c.arms:
        seeds.add_trace(go.Box(y=[100 * v for v in a.values(c.metric)], name=a.name, boxpoints="all",
                               jitter=0.3, text=[f"seed {s}" for s in a.seeds]))
    seeds.update_layout(yaxis_title=f"{c.metric} (%)", showlegend=False)
    figs = [("Test accuracy per seed (best configurations re-trained)", seeds)]
    weights = go.Figure()
    for a in c.arms:
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
        figs.append(("Loss weights over epochs (dotted: fixed)", weights))
    studies = [a.study for a in c.arms]
    figs.append(("Optimization history (each arm's study)",
                 vis.plot_optimization_history(studies, target_name=c.metric.replace("test/", "val/", 1))))
    for s in studies:
        figs.append((f"Intermediate values per epoch: {s.study_name}", vis.plot_intermediate_values(s)))
    for s in studies:
        if len(_params(s)) > 1:  # with one parameter its importance is 1.0 by definition
            figs.append((f"Parameter importances: {s.study_name}", vis.plot_param_importances(s)))
        searched = [p for p in _params(s) if "loss_weights" in p]
        if len(searched) >= 2:
            figs.append((f"Loss-weight landscape: {s.study_name}", vis.plot_contour(s, params=searched[:2])))
    return figs


def study_lines(a: Arm) -> list[str]:
    """One arm's section: its study, best configuration (searched values, then what was fixed) and re-runs."""
    trials = a.study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = a.study.best_trial
    search_s = sum(t.user_attrs.get("seconds", 0) for t in trials)
    rerun_s = sum(r.get("seconds", 0) for r in a.records)
    lines = [f"### {a.name}", "",
             f"- experiment: `{best.user_attrs.get('experiment')}`",
             f"- trials: {', '.join(f'{n} {s}' for s, n in states.items() if n)}; "
             f"training time {_duration(search_s)}",
             f"- best val value: {best.value:.4f} (trial {best.number})"]
    lines += [f"- `{k}` = {v:.6g}" if isinstance(v, float) else f"- `{k}` = {v}"
              for k, v in best.params.items()]
    fixed = [o for o in best.user_attrs.get("overrides", [])  # the searched values are listed above
             if ("loss_weights" in o or "weighting" in o) and o.lstrip("+~").split("=")[0] not in best.params]
    if fixed:
        lines.append(f"- fixed: {', '.join(f'`{o}`' for o in fixed)}")
    lines.append(f"- re-runs: {len(a.records)} seeds, {_duration(rerun_s)} training, "
                 f"{sum(r.get('epochs', 0) for r in a.records) / len(a.records):.1f} epochs on average")
    return [*lines, ""]


def write(out_dir: Path, c: Comparison, title: str) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = c.reference.seeds
    fidelity = " ".join(f"`{o}`" for o in c.extra) or "the studies' own settings"
    setup = (f"Each arm's best configuration re-trained for seeds {seeds[0]}–{seeds[-1]} "
             f"({len(seeds)} seeds) with {fidelity}, "
             "then tested once on the test split. Intervals are 95% Student-t (means) and Welch "
             "(differences); Holm adjusts the p-values over all arms compared with the reference.")
    tables = [("Test accuracy (mean over seeds, [95% CI])", accuracy_table(c)),
              (f"Against {c.reference.name}: {c.metric}", contrast_table(c)),
              (f"{c.metric} per seed (%)", seed_table(c))]
    figs = _figures(c)

    md = [f"# {title}", "", setup, "", "## Verdicts", "", *(f"- {s}" for s in c.sentences()), ""]
    for heading, t in tables:
        md += [f"## {heading}", "", *_markdown(t), ""]
    md += ["## Best configurations", ""]
    for a in c.arms:
        md += study_lines(a)
    md += [f"Figures in [report.html](report.html): {'; '.join(t for t, _ in figs)}.", ""]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(md))

    parts = [f"<h1>{html.escape(title)}</h1><p>{html.escape(setup)}</p><h2>Verdicts</h2><ul>",
             *(f"<li><b>{html.escape(s)}</b></li>" for s in c.sentences()), "</ul>"]
    for heading, t in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", _html(t)]
    for i, (heading, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    report_html = out_dir / "report.html"
    report_html.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                           f"<title>{html.escape(title)}</title></head><body>" + "\n".join(parts)
                           + "</body></html>")
    return report_md, report_html


def title_of(arms: Sequence[str], reference: str) -> str:
    return f"{', '.join(a for a in arms if a != reference)} vs {reference}"
