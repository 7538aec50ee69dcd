"""The swept comparison's numbers and report: at every value, each arm's mean test accuracy with its
interval and its difference from the reference (paired over the shared seeds, Welch beside it),
Holm-adjusted over all the sweep's comparisons (arms x values) as one family; one sentence per
value; what each value's design detects; accuracy against the value."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from optuna.trial import TrialState

from mhtrain.evaluate import document as doc
from mhtrain.evaluate.document import Block, Bullets, Figure, Heading, Para, Table, TableBlock
from mhtrain.evaluate.report import design_lines, ledger_blocks, setup_text, space_items, with_ci
from mhtrain.evaluate.reruns import Arm
from mhtrain.evaluate.stats import (
    LEVEL,
    UNADJUSTED,
    Contrast,
    adjust,
    family,
    mean_ci,
    p_text,
    plural,
    pp,
    r_text,
)
from mhtrain.evaluate.sweep import Over, Point
from mhtrain.study.analyses import Look


@dataclass(frozen=True)
class SweepResult:
    """A sweep's re-trained arms at every value and their contrasts, Holm over the sweep."""

    over: Over
    points: list[Point]
    arms: list[list[Arm]]  # per point, every arm (the reference among them)
    reference: str
    metric: str
    contrasts: list[list[Contrast]]  # per point, every other arm against the reference, then pairs
    test_images: int | None = None  # the test split's size, for its binomial error
    look: Look | None = None  # where this analysis stands in the studies' ledger

    @property
    def family(self) -> int:
        return max((c.family for cs in self.contrasts for c in cs), default=0)

    def arm(self, i: int, name: str) -> Arm:
        return next(a for a in self.arms[i] if a.name == name)


def analyse(over: Over, points: Sequence[Point], arms: Sequence[Sequence[Arm]], reference: str,
            metric: str, test_images: int | None = None, pairs: Sequence[tuple[str, str]] = (),
            look: Look | None = None) -> SweepResult:
    """Every arm against the reference at every value, and each extra (arm, other) pair; Holm
    over all of them at once, so a difference found at one value out of many is judged as one of
    many. At a declared later look (`look.sequential`) the anytime-valid test decides."""
    later = look is not None and look.sequential
    every = [c for point_arms in arms for c in family(point_arms, reference, metric, pairs, later)]
    adjusted, per_point = adjust(every), len(arms[0]) - 1 + len(pairs)
    split = [adjusted[i * per_point:(i + 1) * per_point] for i in range(len(arms))]
    return SweepResult(over, list(points), [list(a) for a in arms], reference, metric, split,
                       test_images, look)


def sentence(r: SweepResult, i: int) -> str:
    """One quotable sentence per value: every arm against the reference, with the Holm family;
    the value named by its training images for a subset, else by the setting."""
    point, ref = r.points[i], r.arm(i, r.reference)
    where = (f"With {point.label.replace(' (all)', '')} training images (`{r.over.override(point.value)}`)"
             if r.over.is_subset else f"At `{r.over.override(point.value)}`")
    parts = []
    for c in r.contrasts[i]:
        t = c.deciding
        kind = f"paired {UNADJUSTED}" if c.sequential is None else "anytime-valid"
        judged = ("cannot be judged: the per-seed differences have no spread" if math.isnan(t.p) else
                  f"{kind} {100 * LEVEL:.0f}% {'CI' if c.sequential is None else 'interval'} {pp(t.low)} "
                  f"to {pp(t.high)}, Holm-adjusted p = {t.p_holm:.3g}: {c.verdict()}; "
                  f"Welch p = {p_text(c.welch.p)}")
        mean = f" {100 * sum(c.arm_values) / len(c.arm_values):.2f}%," if c.reference == r.reference else ""
        parts.append(f"{c.label(r.reference)}{mean} {pp(c.diff)} ({judged})")
    seeds = len(ref.records)
    return (f"{where}, against {r.reference} at {100 * sum(ref.values(r.metric)) / seeds:.2f}% "
            f"{r.metric}: {'; '.join(parts)}; Holm over {'all ' * (r.family > 1)}"
            f"{plural(r.family, 'comparison')} of the sweep, {seeds} seeds per arm.")


def table(r: SweepResult) -> Table:
    """Value by value, arm by arm: mean with interval, difference with interval, both p-values."""
    level = f"{100 * LEVEL:.0f}%"
    kind = (f"anytime-valid {level} interval" if r.look is not None and r.look.sequential
            else f"paired {level} CI, {UNADJUSTED}")
    test = "anytime-valid" if r.look is not None and r.look.sequential else "paired"
    rows = [[r.over.short, "arm", f"{r.metric} (%) [{level} t CI]",
             f"vs {r.reference} (pp) [{kind}]", f"{test} p", f"{test} Holm-adjusted p",
             f"Welch {level} CI, {UNADJUSTED} (pp)", "Welch p", "r over seeds"]]
    for i, point in enumerate(r.points):
        by_arm = {c.arm: c for c in r.contrasts[i] if c.reference == r.reference}
        for a in r.arms[i]:
            c = by_arm.get(a.name)
            vs = ["reference", "", "", "", "", ""] if c is None else _versus(c)
            rows.append([point.label, a.name, with_ci(a.values(r.metric)), *vs])
        rows += [[point.label, c.label(r.reference), "", *_versus(c)]
                 for c in r.contrasts[i] if c.reference != r.reference]
    return rows


def _versus(c: Contrast) -> list[str]:
    t = c.deciding
    return [f"{100 * c.diff:+.2f} [{100 * t.low:+.2f}, {100 * t.high:+.2f}]", p_text(t.p), p_text(t.p_holm),
            f"{100 * c.welch.low:+.2f} to {100 * c.welch.high:+.2f}", p_text(c.welch.p),
            r_text(c.r, len(c.arm_values))]


def best_table(r: SweepResult) -> Table:
    """Each arm's best configuration at each value, and what its search cost."""
    rows = [[r.over.short, "arm", "trials (complete / pruned)", "best val", "searched values"]]
    for i, point in enumerate(r.points):
        for a in r.arms[i]:
            states = Counter(t.state for t in a.study.get_trials(deepcopy=False))
            best = a.study.best_trial
            values = ", ".join(f"`{k.rsplit('.', 1)[-1]}` {v:.3g}" if isinstance(v, float) else f"`{k}` {v}"
                               for k, v in best.params.items())
            rows.append([point.label, a.name, f"{states[TrialState.COMPLETE]} / {states[TrialState.PRUNED]}",
                         f"{best.value:.4f} (trial {best.number})", values])
    return rows


def _axis(r: SweepResult) -> tuple[list, dict]:
    if any(p.x is None for p in r.points):
        return [p.label for p in r.points], {"type": "category"}
    xs = [p.x for p in r.points]
    log = r.over.is_subset or (min(xs) > 0 and max(xs) / min(xs) >= 100)
    return xs, {"type": "log" if log else "linear", "tickvals": xs, "ticktext": [p.label for p in r.points]}


def _dodge(xs: list, axis: dict, k: int, n: int) -> list:
    """Shift the k-th of n lines a little sideways, so their error bars do not hide each other."""
    if axis["type"] == "category":
        return xs
    shift = 0.012 * (k - (n - 1) / 2)
    if axis["type"] == "log":
        return [x * 10 ** shift for x in xs]
    span = (max(xs) - min(xs)) or 1.0
    return [x + shift * span for x in xs]


def figures(r: SweepResult) -> list[Figure]:
    """Test accuracy against the value (one line per arm) and each difference from the
    reference against it; log x for a training subset, `null` placed at its size."""
    xs, axis = _axis(r)
    title = f"{r.over.short}" + (" (training images, log scale)" if r.over.is_subset else "")
    acc, diff = go.Figure(), go.Figure()
    names = [a.name for a in r.arms[0]]
    for k, name in enumerate(names):
        cis = [[100 * v for v in mean_ci(r.arm(i, name).values(r.metric))] for i in range(len(r.points))]
        acc.add_trace(go.Scatter(
            x=_dodge(xs, axis, k, len(names)), y=[m for m, _, _ in cis], name=name, mode="lines+markers",
            error_y={"type": "data", "symmetric": False, "array": [h - m for m, _, h in cis],
                     "arrayminus": [m - lo for m, lo, _ in cis]}))
        if name == r.reference:
            continue
        cs = [next(c for c in r.contrasts[i] if c.arm == name and c.reference == r.reference)
              for i in range(len(r.points))]
        diff.add_trace(go.Scatter(
            x=_dodge(xs, axis, k, len(names)), y=[100 * c.diff for c in cs], name=name, mode="lines+markers",
            error_y={"type": "data", "symmetric": False,
                     "array": [100 * (c.deciding.high - c.diff) for c in cs],
                     "arrayminus": [100 * (c.diff - c.deciding.low) for c in cs]}))
    acc.update_layout(xaxis={"title": title, **axis}, yaxis_title=f"{r.metric} (%), mean over seeds")
    diff.add_hline(y=0, line_dash="dot")
    diff.update_layout(xaxis={"title": title, **axis}, yaxis_title=f"difference from {r.reference} (pp)")
    return [Figure(f"{r.metric} against {r.over.key} ({100 * LEVEL:.0f}% CI per point)", acc),
            Figure(f"Difference from {r.reference} against {r.over.key} (paired {UNADJUSTED} "
                   f"{100 * LEVEL:.0f}% CI)", diff)]


def describe(r: SweepResult, budget: str, search: Sequence[str], rerun: Sequence[str],
             full: int | None) -> list[str]:
    """How the numbers were made: budget, fidelities, intervals, the family, what `null` means."""
    seeds = r.arms[0][0].seeds
    lines = [f"At every value of `{r.over.key}` ({', '.join(p.value for p in r.points)}) each arm's study "
             f"was searched on its own: {budget} with its config's pruner, search fidelity "
             f"{' '.join(f'`{o}`' for o in search) or 'the study defaults'}, the same for every arm.",
             setup_text(seeds, [*rerun, f"{r.over.key}=<value>"], "Then each arm's best configuration was",
                        f"all {plural(r.family, 'comparison')} of the sweep at once "
                        f"({plural(len(r.contrasts[0]), 'contrast')} x {plural(len(r.points), 'value')})",
                        r.look is not None and r.look.sequential)]
    if r.over.is_subset and full is not None:
        lines.append(f"`null` means the full training set: {full:,} images (the training split less "
                     "the validation set). Every value trains for the same epochs, so a smaller set "
                     "also takes fewer optimizer steps.")
    return lines


def caveats(r: SweepResult) -> list[str]:
    """Per value: the difference its design detects and the test set's own error."""
    return [f"{point.label}: {line}" for i, point in enumerate(r.points)
            for line in design_lines(r.contrasts[i], r.arm(i, r.reference).values(r.metric), r.test_images)]


def seed_table(r: SweepResult) -> Table:
    """Every arm's metric seed by seed at every value, and each difference from the reference per
    seed, so a reader can redo any statistic."""
    seeds = r.arm(0, r.reference).seeds
    rows = [[r.over.short, "arm", *(f"seed {s}" for s in seeds)]]
    for i, point in enumerate(r.points):
        for a in r.arms[i]:
            rows.append([point.label, a.name, *(f"{100 * v:.2f}" for v in a.values(r.metric))])
        rows += [[point.label, f"{c.arm} − {c.reference} (pp)",
                  *(f"{100 * d:+.2f}" for d in c.differences)] for c in r.contrasts[i]]
    return rows


def blocks(r: SweepResult, setup: Sequence[str]) -> list[Block]:
    """The whole report in order: setup, one verdict per value, table, caveats, figures, seeds,
    configurations."""
    return [*(Para(s) for s in setup), Heading("Verdicts"),
            Bullets([sentence(r, i) for i in range(len(r.points))]),
            Heading(f"{r.metric} against {r.over.key}"), TableBlock(table(r)), Bullets(caveats(r)),
            *figures(r), Heading(f"{r.metric} per seed (%) and per-seed differences (pp)"),
            TableBlock(seed_table(r)), Heading("Search spaces (the same at every value)"),
            Bullets(space_items(r.arms[0])), *ledger_blocks(r.look),
            Heading("Best configuration per value"), TableBlock(best_table(r))]


def write(out_dir: Path, r: SweepResult, setup: Sequence[str], title: str,
          inline_js: bool = False) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir`; return both paths."""
    return doc.write(out_dir, title, blocks(r, setup), inline_js)

