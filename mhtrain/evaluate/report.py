"""The comparison report: the same tables and verdicts in Markdown (to quote) and in one HTML page
with the Plotly figures (to explore)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mhtrain.evaluate import document as doc
from mhtrain.evaluate.document import Block, Bullets, Heading, Para, Table, TableBlock
from mhtrain.evaluate.figures import comparison_figures
from mhtrain.evaluate.power import power_line, sampling_line
from mhtrain.evaluate.reruns import Arm
from mhtrain.evaluate.searches import Searches, split_table
from mhtrain.evaluate.stats import (
    INTERVAL,
    LEVEL,
    UNADJUSTED,
    Contrast,
    mean_ci,
    p_text,
    plural,
    plural_of,
    r_text,
)
from mhtrain.study.analyses import Look, units_text
from mhtrain.study.confirm import chosen_trial
from mhtrain.study.replay import replayed


@dataclass(frozen=True)
class Comparison:
    """Everything a report shows: the re-trained arms, the reference and the contrasts."""

    arms: list[Arm]
    reference: Arm
    metric: str
    contrasts: list[Contrast]
    extra: list[str] = field(default_factory=list)  # the re-runs' fidelity overrides
    test_images: int | None = None  # the test split's size, for its binomial error
    look: Look | None = None  # where this analysis stands in the studies' ledger
    searches: Searches | None = None  # every search's re-runs; the arms above pool them with N > 1

    @property
    def repeated(self) -> int:
        """Searches per arm: 1 unless `--study-seeds` repeated them."""
        return len(self.searches.arms) if self.searches else 1

    def sentences(self) -> list[str]:
        """One sentence per contrast, the reference's own mean and interval (the plain mean, as in
        the table and the differences), then what the design detects and what the test set adds."""
        values = self.reference.values(self.metric)
        mean, low, high = mean_ci(values)
        return [c.sentence() for c in self.contrasts] + [
            f"{self.reference.name} (the reference): {self.metric} {100 * mean:.2f}% (plain mean, "
            f"{100 * LEVEL:.0f}% t CI {100 * low:.2f} to {100 * high:.2f}%, "
            f"{plural(len(values), self.contrasts[0].unit if self.contrasts else 'seed')}).",
            *design_lines(self.contrasts, values, self.test_images)]


def design_lines(contrasts: Sequence[Contrast], reference: Sequence[float],
                 test_images: int | None) -> list[str]:
    """A table's two caveats: the difference its design detects, the test set's own error."""
    n = len(reference)
    mean = sum(reference) / n
    seed_se = (sum((v - mean) ** 2 for v in reference) / (n - 1)) ** 0.5 / n**0.5
    unit = contrasts[0].unit if contrasts else "seed"
    return [power_line(contrasts), sampling_line(mean, test_images, seed_se, unit)]


def duration(seconds: float) -> str:
    """Seconds below two minutes, minutes above."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def with_ci(values: Sequence[float]) -> str:
    """A mean accuracy and its interval in percent: `98.75 [98.53, 98.97]`."""
    mean, low, high = mean_ci(values)
    return f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def accuracy_table(c: Comparison) -> Table:
    """Arm by arm, the mean test accuracy of every head with its confidence interval."""
    heads = list(dict.fromkeys(h for a in c.arms for h in a.heads))
    per = c.searches.per if c.searches else 0
    runs_head = "seeds" if c.repeated == 1 else "searches × seeds"
    rows = [["arm", runs_head, *(f"test {h} acc (%)" for h in heads)]]
    for a in c.arms:
        cells = [with_ci(a.values(f"test/{h}_acc")) if h in a.heads else "–" for h in heads]
        runs = str(len(a.records)) if c.repeated == 1 else f"{c.repeated} × {per}"
        rows.append([a.name + (" (reference)" if a is c.reference else ""), runs, *cells])
    return rows


def cost_table(c: Comparison) -> Table:
    """What each arm's re-runs cost per epoch, and that against the reference's: a gradient-balancing
    weighting (one backward per head) costs more than a scalarized loss at the same accuracy."""
    def per_epoch(a: Arm) -> float:
        epochs = sum(r.get("epochs", 0) for r in a.records)
        return sum(r.get("seconds", 0) for r in a.records) / max(epochs, 1)

    ref = per_epoch(c.reference)
    return [["arm", "re-run s per epoch", f"× {c.reference.name}"],
            *([a.name, f"{per_epoch(a):.2f}", f"{per_epoch(a) / ref:.2f}" if ref else "–"] for a in c.arms)]


def contrast_table(c: Comparison) -> Table:
    """Every arm minus the reference: the paired test (which decides at a first look) and Welch's
    beside it, each with its unadjusted interval, raw and Holm-adjusted p; the arms' correlation
    over seeds. At a later look the anytime-valid test comes first: it decides."""
    level = f"{100 * LEVEL:.0f}%"
    later = any(x.sequential is not None for x in c.contrasts)
    head = ["arm", "difference (pp)"] + [f"anytime-valid {level} interval (pp)", "anytime-valid p",
                                         "anytime-valid Holm-adjusted p"] * later
    rows = [head + [f"paired {level} CI, {UNADJUSTED} (pp)", "paired p", "paired Holm-adjusted p",
                    f"Welch {level} CI, {UNADJUSTED} (pp)", "Welch p", "Welch Holm-adjusted p",
                    f"r over {plural_of(c.contrasts[0].unit)}" if c.contrasts else "r"]]
    for x in c.contrasts:
        s = [_span(x.sequential), p_text(x.sequential.p), p_text(x.sequential.p_holm)] if x.sequential else []
        rows.append([x.label(c.reference.name), f"{100 * x.diff:+.2f}", *s, _span(x.paired),
                     p_text(x.paired.p), p_text(x.paired.p_holm), _span(x.welch), p_text(x.welch.p),
                     p_text(x.welch.p_holm), r_text(x.r, len(x.arm_values), x.unit)])
    return rows


def _span(t: Any) -> str:
    if not (math.isfinite(t.low) and math.isfinite(t.high)):
        return "not bounded yet"
    return f"{100 * t.low:+.2f} to {100 * t.high:+.2f}"


def space_text(d: BaseDistribution) -> str:
    """A searched key's distribution as Optuna recorded it on the trial (`float 0.0001–0.1, log`)."""
    if isinstance(d, CategoricalDistribution):
        return f"categorical {{{', '.join(str(c)[:40] for c in d.choices[:20])}}}"
    if isinstance(d, FloatDistribution | IntDistribution):
        kind = "float" if isinstance(d, FloatDistribution) else "int"
        return (f"{kind} {d.low:.6g}–{d.high:.6g}" + (", log" if d.log else "")
                + (f", step {d.step:.6g}" if d.step is not None else ""))
    return type(d).__name__


def space_items(arms: Sequence[Arm]) -> list[str]:
    """Each arm's search space as Optuna recorded it on the arm's answer (what the search drew
    from), with the trials it spent, and one line for every key two arms search over different
    ranges: arms on equal terms, or shown not to be."""
    spaces = {a.name: chosen_trial(a.study).distributions for a in arms}
    items = []
    for a in arms:
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   for t in a.study.get_trials(deepcopy=False))
        keys = "; ".join(f"`{k}` {space_text(v)}" for k, v in spaces[a.name].items()) or "nothing searched"
        items.append(f"{a.name}: {keys} ({done} trials finished)")
    for key in sorted({k for space in spaces.values() for k in space}):
        texts = {name: space_text(space[key]) for name, space in spaces.items() if key in space}
        if len(set(texts.values())) > 1:
            items.append(f"not on equal terms: `{key}` is searched over "
                         + ", ".join(f"{t} by {name}" for name, t in texts.items()))
    return items


def seed_table(c: Comparison) -> Table:
    """The primary metric seed by seed (search by search with repeated searches), and each arm's
    difference from the reference per unit, so a reader can redo any statistic."""
    unit = "seed" if c.repeated == 1 else "search (study seed): mean of its seeds"
    return [[unit, *(a.name for a in c.arms), *(f"{x.arm} − {x.reference} (pp)" for x in c.contrasts)],
            *([str(seed), *(f"{100 * a.values(c.metric)[i]:.2f}" for a in c.arms),
               *(f"{100 * x.differences[i]:+.2f}" for x in c.contrasts)]
              for i, seed in enumerate(c.reference.seeds))]


def study_items(a: Arm) -> list[str]:
    """One arm's study, best configuration (searched values, then what was fixed) and re-runs."""
    trials = a.study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    best = chosen_trial(a.study)
    search_s = sum(t.user_attrs.get("seconds", 0) for t in trials)
    rerun_s = sum(r.get("seconds", 0) for r in a.records)
    stacked = any(isinstance(p := t.user_attrs.get("population"), dict) and p.get("members", 1) != 1
                  for t in trials)  # members train at once: each records the population's wall time
    items = [f"experiment: `{best.user_attrs.get('experiment')}`",
             f"trials: {', '.join(f'{n} {s}' for s, n in states.items() if n)}; "
             f"training time {duration(search_s)}"
             + (" summed over trials (stacked members train at once, each counting the whole wall time)"
                if stacked else ""),
             f"best val value: {best.value:.4f} (trial {best.number})"]
    if best.number != a.study.best_trial.number:
        items[-1] = (f"answer: trial {best.number}, val {best.value:.4f}, chosen by `--confirm` on fresh "
                     f"seeds over the search's best, trial {a.study.best_trial.number}")
    items += [f"`{k}` = {v:.6g}" if isinstance(v, float) else f"`{k}` = {v}" for k, v in best.params.items()]
    fixed = [o for o in best.user_attrs.get("overrides", [])  # the searched values are listed above
             if ("loss_weights" in o or "weighting" in o) and o.lstrip("+~").split("=")[0] not in best.params]
    if fixed:
        items.append(f"fixed: {', '.join(f'`{o}`' for o in fixed)}")
    _, schedule = replayed(a.study, best)
    if schedule is not None:  # a PBT member: its re-runs replay its lineage's schedule, not the above
        stretches = [f"from epoch {s['epoch']} (trial {s['trial']}) " + ", ".join(
            f"`{k.rsplit('.', 1)[-1]}` {v:.4g}" for k, v in s["values"].items()) for s in schedule]
        items.append(f"re-runs replay its lineage's schedule: {'; '.join(stretches)}")
    epochs = sum(r.get("epochs", 0) for r in a.records)
    runs = sum(r.get("runs", 1) for r in a.records)  # a pooled record is one search's runs
    items.append(f"re-runs: {runs}, {duration(rerun_s)} training, "
                 f"{epochs / runs:.1f} epochs on average, {rerun_s / max(epochs, 1):.1f} s per "
                 "epoch (a gradient-aggregating weighting needs one backward per head: compare this cost "
                 "across arms)")
    return items


def setup_text(seeds: Sequence[int], extra: Sequence[str],
               what: str = "Each arm's best configuration",
               family: str = "all the arms compared with the reference", later: bool = False,
               runs: str | None = None, unit: str = "seed") -> str:
    """How the numbers were made, both kinds of interval named."""
    fidelity = "".join(f" `{o}`" for o in extra)
    runs = runs or f"seeds {seeds[0]}–{seeds[-1]} ({len(seeds)} seeds)"
    return (f"{what} re-trained for {runs} with its best "
            f"trial's settings{' and' + fidelity if extra else ''}, then tested once on the full test "
            f"split. Accuracy intervals: {100 * LEVEL:.0f}% {INTERVAL}. Differences, in percentage "
            f"points: the seeds are shared across arms and fix the initial weights and batch order, so "
            f"the paired t-test on the per-{unit} differences decides"
            f"{' (a search: its mean over its own seeds)' if unit == 'search' else ''}; Welch's test, "
            f"which ignores the "
            f"pairing, is shown beside it. Holm adjusts the p-values over {family}. Both intervals are "
            f"{UNADJUSTED} {100 * LEVEL:.0f}% intervals: Holm's step-down verdicts have no simultaneous "
            f"interval that agrees with them, so an {UNADJUSTED} interval may exclude 0 beside a Holm "
            f"verdict of no significant difference."
            + (" This analysis is a sequential look (see Analyses of these studies): the anytime-valid "
               "test decides, and the paired t-test is shown beside it only." if later else ""))


def variance_blocks(c: Comparison) -> list[Block]:
    """Where each difference's uncertainty comes from, and the seed x image bootstrap."""
    if c.searches is None:
        return []
    n = c.repeated
    why = (f"each arm searched {n} times (study seeds 0–{n - 1}), each search's answer re-trained on "
           f"{c.searches.per} seeds of its own: the verdict's unit is one search, so its interval covers "
           "the search and the training seed" if n > 1 else
           "one search per arm, so the search's own variance is in no interval here (repeat the searches "
           "with --study-seeds N to measure it)")
    return [Heading("Where the uncertainty comes from"),
            Para(f"Variance of each estimated difference by source, as the SD it adds (pp) and its share: "
                 f"{why}. The test images' part is what another draw of {c.test_images or 'the'} test images "
                 "would add; the seed x image bootstrap resamples searches, seeds within them and test "
                 "images (percentile interval)."),
            TableBlock(split_table(c.searches, c.contrasts, c.metric, LEVEL))]


def ledger_blocks(look: Look | None) -> list[Block]:
    """The analysis's place in its question's ledger, and the analyses recorded before it."""
    if look is None:
        return []
    this, intro, *earlier = look.lines()
    return [Heading("Analyses of these studies"), Para(this), Para(intro), Bullets(earlier)]


def blocks(c: Comparison) -> list[Block]:
    """The whole report in order: setup, verdicts, tables, where the uncertainty comes from,
    search spaces, the ledger, best configurations, figures."""
    later = c.look is not None and c.look.sequential
    unit = "seed" if c.repeated == 1 else "search"
    runs = None if c.repeated == 1 else (
        f"each of its {c.repeated} searches, {c.searches.per} seeds per search ("
        f"{units_text((j, s) for j, row in enumerate(c.searches.arms) for s in row[0].seeds)})")
    return [Para(setup_text(c.reference.seeds, c.extra, later=later, runs=runs, unit=unit)),
            Heading("Verdicts"), Bullets(c.sentences()),
            Heading(f"Test accuracy (plain mean over seeds [{100 * LEVEL:.0f}% t CI])"),
            TableBlock(accuracy_table(c)),
            Heading("Cost (the re-runs, on this machine)"), TableBlock(cost_table(c)),
            Heading(f"Against {c.reference.name}: {c.metric}"), TableBlock(contrast_table(c)),
            *(Para(line) for line in design_lines(c.contrasts, c.reference.values(c.metric), c.test_images)),
            *variance_blocks(c),
            Heading(f"{c.metric} per {unit} (%) and per-{unit} differences (pp)"),
            TableBlock(seed_table(c)),
            Heading("Search spaces"), Bullets(space_items(c.arms)), *ledger_blocks(c.look),
            Heading("Best configurations"),
            *(b for a in c.arms for b in (Heading(a.name, 3), Bullets(study_items(a)))),
            Heading("Figures"), *comparison_figures(c.arms, c.metric)]


def write(out_dir: Path, c: Comparison, title: str, inline_js: bool = False) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir`; return both paths."""
    return doc.write(out_dir, title, blocks(c), inline_js)


def title_of(arms: Sequence[str], reference: str) -> str:
    """`a, b vs reference`."""
    return f"{', '.join(a for a in arms if a != reference)} vs {reference}"
