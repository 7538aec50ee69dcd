"""The statistics of an evaluation: a plain mean accuracy with its t interval, an arm against a
reference seed by seed (the paired t-test, which decides, with Welch's beside it; at a declared
later look the anytime-valid test of `sequential`), and Holm's correction over a family of them.

The seeds are shared across arms and fix the initial weights and the batch order, so the design
is paired: the paired t-test on the per-seed differences is its test. Welch's, which ignores the
pairing, is shown beside it so a reader sees what the pairing bought (the correlation says why).
Intervals are unadjusted: Holm has no simultaneous interval that agrees with its step-down
verdicts (the compatible ones are one-sided and uninformative once a hypothesis is rejected), and
Bonferroni's intervals would disagree with Holm's verdicts. So an unadjusted interval can exclude
0 beside a Holm verdict of no difference; every table and sentence says which is which."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from scipy import stats

from mhtrain import ConfigError
from mhtrain.study.anytime import LEVEL, anytime

if TYPE_CHECKING:  # for hints only: the statistics need no training code
    from mhtrain.evaluate.reruns import Arm

UNDEFINED_P = 1.0  # what an undefined test (no spread) counts as in a family: it stays in m
INTERVAL = ("Student-t intervals (n − 1 degrees of freedom) of the plain mean over seeds, cut to "
            "0–100% where they run past; the column is that plain mean, the one every difference subtracts")
UNADJUSTED = "unadjusted"  # the label every difference interval carries
MIN_R_SEEDS = 3  # a correlation over fewer seeds is ±1 or meaningless: it is not printed


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The plain mean of accuracies over seeds and its Student-t interval, cut to [0, 1]: the
    quantity a fresh seed is expected to score and the one every difference subtracts, so a
    column and the differences beside it never disagree. An accuracy's mean lies in [0, 1], so
    cutting the interval there keeps its coverage. Values without spread give a point."""
    if not values:
        raise ValueError("mean_ci of no values")
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"mean_ci takes accuracies in [0, 1], got {list(values)}")
    mean = sum(values) / len(values)
    if len(values) < 2 or max(values) == min(values):
        return mean, mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, max(0.0, float(low)), min(1.0, float(high))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)). An undefined (NaN) p-value counts as
    `UNDEFINED_P` and stays in m: dropping it would shrink the family after the fact, and the
    same rule holds wherever a family is adjusted (compare, its sweeps, the confirmation)."""
    order = sorted((UNDEFINED_P if math.isnan(p) else p, i) for i, p in enumerate(pvalues))
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def pp(v: float) -> str:
    """A difference of accuracies in percentage points."""
    return f"{100 * v:+.2f} pp"


def p_text(p: float) -> str:
    """A p-value for a table: three digits, or why there is none."""
    return "n/a (no spread)" if math.isnan(p) else f"{p:.3g}"


def r_text(r: float, n: int, unit: str = "seed") -> str:
    """A correlation over `n` units for a table, or why there is none."""
    if n < MIN_R_SEEDS:
        return f"n/a (< {plural(MIN_R_SEEDS, unit)})"
    return "n/a (no spread)" if math.isnan(r) else f"{r:+.2f}"


def plural_of(word: str) -> str:
    """`seed` -> `seeds`, `search` -> `searches`."""
    return word + ("es" if word.endswith("ch") else "s")


def plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else plural_of(word)}"


@dataclass(frozen=True)
class Test:
    """One test of a difference: its unadjusted interval, its p-value, and Holm's adjustment of
    that p over the family it was judged in (NaN until `adjust`)."""

    low: float
    high: float
    p: float
    p_holm: float = math.nan


@dataclass(frozen=True)
class Contrast:
    """One arm minus the reference in mean test `metric`, unit by unit (a unit is a shared seed,
    or with repeated searches one search's mean over its shared seeds): the paired t-test, Welch's
    (beside it), the correlation of the two arms over the units, and the SD of the per-unit
    differences (what the design's power rests on). At a later look of a question (`--extend`)
    the anytime-valid test (`sequential`) decides and the paired t-test is shown beside it."""

    arm: str
    reference: str
    metric: str
    arm_values: list[float]
    reference_values: list[float]
    diff: float
    paired: Test
    welch: Test
    r: float  # Pearson correlation of the arms over the units; NaN without spread or < 3 units
    family: int = 0  # the tests Holm adjusted over (an undefined one counts, as p = UNDEFINED_P)
    sequential: Test | None = None  # anytime-valid over every prefix of the units: a later look
    unit: str = "seed"  # what one value is: "seed", or "search" (a study seed's mean over seeds)

    @property
    def differences(self) -> list[float]:
        return [a - b for a, b in zip(self.arm_values, self.reference_values, strict=True)]

    @property
    def sd(self) -> float:
        """SD of the per-unit differences (n - 1 in the denominator)."""
        d = self.differences
        return math.sqrt(sum((x - self.diff) ** 2 for x in d) / (len(d) - 1))

    @property
    def deciding(self) -> Test:
        """The test the verdict rests on: the anytime-valid one at a later look, else the paired t."""
        return self.sequential or self.paired

    @property
    def significant(self) -> bool:
        return not math.isnan(self.deciding.p_holm) and self.deciding.p_holm < 1 - LEVEL

    def label(self, reference: str) -> str:
        """The contrast as a table names it: the arm, or `arm − other` for a pair beside the reference."""
        return self.arm if self.reference == reference else f"{self.arm} − {self.reference}"

    def verdict(self) -> str:
        """How the arm did, in a word or three: improves, hurts, no significant difference."""
        if math.isnan(self.deciding.p):
            return "cannot be judged"
        if self.significant:
            return "improves" if self.diff > 0 else "hurts"
        return "no significant difference"

    def sentence(self) -> str:
        """One sentence to quote: the verdict, both plain means (the ones the difference
        subtracts), the difference and its statistics."""
        m = 100 * sum(self.arm_values) / len(self.arm_values)
        r = 100 * sum(self.reference_values) / len(self.reference_values)
        than = f"{self.metric} compared with {self.reference}"
        head = {"cannot be judged": f"cannot be judged on {than} (the differences have no spread)",
                "no significant difference": f"makes no significant difference to {than}",
                }.get(self.verdict(), f"{self.verdict()} {than}")
        p, w, s, n = self.paired, self.welch, self.sequential, len(self.arm_values)
        units = f"{n} shared seeds" if self.unit == "seed" else f"{n} searches"
        level = f"{100 * LEVEL:.0f}%"
        tested = (f"paired over {units}: {UNADJUSTED} {level} CI {pp(p.low)} to {pp(p.high)}, paired "
                  f"t-test p = {p_text(p.p)}, Holm-adjusted p = {p_text(p.p_holm)} over "
                  f"{plural(self.family, 'comparison')}")
        if s is not None:
            tested = (f"a later look, sequential over {units}: anytime-valid {level} interval {pp(s.low)} "
                      f"to {pp(s.high)}, anytime-valid p = {p_text(s.p)}, Holm-adjusted p = "
                      f"{p_text(s.p_holm)} over {plural(self.family, 'comparison')}; the fixed-sample "
                      f"paired t beside it, not valid after an earlier look: CI {pp(p.low)} to "
                      f"{pp(p.high)}, p = {p_text(p.p)}")
        return (f"{self.arm} {head}: {m:.2f}% vs {r:.2f}% (plain means), difference {pp(self.diff)} "
                f"({tested}; Welch's {UNADJUSTED} CI {pp(w.low)} to {pp(w.high)}, p = {p_text(w.p)}; "
                f"correlation of the arms over {plural_of(self.unit)} r = {r_text(self.r, n, self.unit)}).")


def welch(x: Sequence[float], y: Sequence[float]) -> Test:
    """Welch's t-test of mean(x) - mean(y). Written out rather than scipy's, which warns about a
    sample without spread; both samples without spread leave it undefined (a point, p NaN)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((v - mx) ** 2 for v in x) / (len(x) - 1) / len(x)  # squared standard errors
    vy = sum((v - my) ** 2 for v in y) / (len(y) - 1) / len(y)
    diff, se = mx - my, math.sqrt(vx + vy)
    if se == 0:
        return Test(diff, diff, math.nan)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
    return Test(diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, df)))


def paired(x: Sequence[float], y: Sequence[float]) -> Test:
    """scipy's paired t-test of x - y, seed by seed, with its interval; differences without spread
    leave it undefined (a point, p NaN) rather than infinitely sure."""
    d = [a - b for a, b in zip(x, y, strict=True)]
    mean = sum(d) / len(d)
    if max(d) - min(d) == 0:
        return Test(mean, mean, math.nan)
    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(LEVEL)
    return Test(float(ci.low), float(ci.high), float(result.pvalue))


def correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r of the arms over the shared seeds; NaN when either has no spread or there are
    fewer than `MIN_R_SEEDS` seeds (over 2 seeds r is always ±1)."""
    if len(x) < MIN_R_SEEDS or max(x) == min(x) or max(y) == min(y):
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def contrast(arm: str, values: Sequence[float], reference: str, ref_values: Sequence[float],
             metric: str, sequential: bool = False, unit: str = "seed") -> Contrast:
    """One arm against the reference over the same units, in the same order (the order they were
    added in, which a `sequential` test reads prefix by prefix); not yet adjusted."""
    if min(len(values), len(ref_values)) < 2:
        raise ConfigError("a comparison needs at least 2 seeds per arm (--seeds)")
    if len(values) != len(ref_values):
        raise ConfigError(f"{arm} has {len(values)} seeds, {reference} {len(ref_values)}: a paired "
                          "comparison needs the same seeds in both")
    diff = sum(values) / len(values) - sum(ref_values) / len(ref_values)
    later = None
    if sequential:
        later = Test(*anytime([a - b for a, b in zip(values, ref_values, strict=True)], 1 - LEVEL))
    return Contrast(arm, reference, metric, list(values), list(ref_values), diff,
                    paired(values, ref_values), welch(values, ref_values), correlation(values, ref_values),
                    sequential=later, unit=unit)


def adjust(family: Sequence[Contrast]) -> list[Contrast]:
    """The contrasts with Holm-adjusted p-values over all of them, as one family: each kind of
    test adjusted on its own (the anytime-valid ones at a later look, the paired t, Welch's), an
    undefined test counted as `UNDEFINED_P` in every one of them (`holm`)."""
    def holm_of(tests: list[Test]) -> list[Test]:
        return [replace(t, p_holm=a) for t, a in zip(tests, holm([t.p for t in tests]), strict=True)]

    paired_, welch_ = holm_of([c.paired for c in family]), holm_of([c.welch for c in family])
    later = [c.sequential for c in family]
    if all(t is not None for t in later):
        later = holm_of(later)
    return [replace(c, paired=p, welch=w, sequential=s, family=len(family))
            for c, p, w, s in zip(family, paired_, welch_, later, strict=True)]


def family(arms: Sequence[Arm], reference: str, metric: str, pairs: Sequence[tuple[str, str]] = (),
           sequential: bool = False, unit: str = "seed") -> list[Contrast]:
    """Every arm but the reference against it, then each extra (arm, other) pair, unit by unit
    (not yet adjusted): what one family of comparisons holds."""
    by_name = {a.name: a for a in arms}
    ref = by_name[reference]
    for a in arms:
        if a.seeds != ref.seeds:
            raise ConfigError(f"{a.name} ran seeds {a.seeds}, {ref.name} {ref.seeds}: "
                              "a paired comparison needs the same seeds")
    vs = [(a, ref) for a in arms if a is not ref] + [(by_name[x], by_name[y]) for x, y in pairs]
    return [contrast(a.name, a.values(metric), b.name, b.values(metric), metric, sequential, unit)
            for a, b in vs]


def contrasts(arms: Sequence[Arm], reference: Arm, metric: str, pairs: Sequence[tuple[str, str]] = (),
              sequential: bool = False, unit: str = "seed") -> list[Contrast]:
    """Every arm but the reference against it, and each extra pair, Holm-adjusted as one family."""
    return adjust(family(arms, reference.name, metric, pairs, sequential, unit))
