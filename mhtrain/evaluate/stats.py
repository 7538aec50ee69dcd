"""The statistics of an evaluation: a mean accuracy with an interval that stays inside [0, 1], an
arm against a reference seed by seed (the paired t-test, which decides, with Welch's beside it),
and Holm's correction over a family of them.

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

if TYPE_CHECKING:  # for hints only: the statistics need no training code
    from mhtrain.evaluate.reruns import Arm

LEVEL = 0.95  # of every confidence interval; also the significance threshold 1 - LEVEL
EDGE = 1e-4  # an accuracy of exactly 0 or 1 counts as this far inside: its logit is infinite
INTERVAL = ("Student-t interval of the mean computed on the logit scale and mapped back, so it "
            "stays inside 0–100%; the value shown is that logit-scale mean mapped back, the point "
            "its interval is built around (the plain mean of the seeds can lie outside it)")
UNADJUSTED = "unadjusted"  # the label every difference interval carries


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """A mean accuracy and its confidence interval, all three in [0, 1] and the first inside the
    other two. A raw-scale Student-t interval runs past 100% with few, spread-out seeds
    (88.21 [56.83, 119.59]); the t interval (n - 1 degrees of freedom) of the logits, mapped back,
    stays inside (0, 1), lopsided near the edges as an accuracy's uncertainty is. Its centre, the
    logit mean mapped back, is the value returned: the plain mean of nine seeds at 0.999 and one at
    0.70 is 0.9691, outside [0.9928, 0.9995]. Values without spread give a zero-width interval."""
    if not values:
        raise ValueError("mean_ci of no values")
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"mean_ci takes accuracies in [0, 1], got {list(values)}")
    clipped = [min(max(v, EDGE), 1 - EDGE) for v in values]
    logits = [math.log(p / (1 - p)) for p in clipped]
    if len(values) < 2 or max(logits) - min(logits) == 0:
        mean = sum(values) / len(values)
        return mean, mean, mean
    center, sem = sum(logits) / len(logits), stats.sem(logits)
    low, high = stats.t.interval(level, len(values) - 1, loc=center, scale=sem)
    return _expit(center), _expit(float(low)), _expit(float(high))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)). Undefined (NaN) p-values stay NaN and do
    not count in m."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
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


def r_text(r: float) -> str:
    """A correlation for a table, or why there is none."""
    return "n/a" if math.isnan(r) else f"{r:+.2f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
    """One arm minus the reference in mean test `metric`, seed by seed: the paired t-test (which
    decides), Welch's (beside it), the correlation of the two arms over the seeds, and the SD of
    the per-seed differences (what the design's power rests on)."""

    arm: str
    reference: str
    metric: str
    arm_values: list[float]
    reference_values: list[float]
    diff: float
    paired: Test
    welch: Test
    r: float  # Pearson correlation of the arms over the shared seeds; NaN when one has no spread
    family: int = 0  # the defined paired p-values Holm adjusted over

    @property
    def differences(self) -> list[float]:
        return [a - b for a, b in zip(self.arm_values, self.reference_values, strict=True)]

    @property
    def sd(self) -> float:
        """SD of the per-seed differences (n - 1 in the denominator)."""
        d = self.differences
        return math.sqrt(sum((x - self.diff) ** 2 for x in d) / (len(d) - 1))

    @property
    def significant(self) -> bool:
        return not math.isnan(self.paired.p_holm) and self.paired.p_holm < 1 - LEVEL

    def label(self, reference: str) -> str:
        """The contrast as a table names it: the arm, or `arm − other` for a pair beside the reference."""
        return self.arm if self.reference == reference else f"{self.arm} − {self.reference}"

    def verdict(self) -> str:
        """How the arm did, in a word or three: improves, hurts, no significant difference."""
        if math.isnan(self.paired.p):
            return "cannot be judged"
        if self.significant:
            return "improves" if self.diff > 0 else "hurts"
        return "no significant difference"

    def sentence(self) -> str:
        """One sentence to quote: the verdict, both means, the difference and its statistics."""
        m = 100 * sum(self.arm_values) / len(self.arm_values)
        r = 100 * sum(self.reference_values) / len(self.reference_values)
        than = f"{self.metric} compared with {self.reference}"
        head = {"cannot be judged": f"cannot be judged on {than} (the differences have no spread)",
                "no significant difference": f"makes no significant difference to {than}",
                }.get(self.verdict(), f"{self.verdict()} {than}")
        p, w = self.paired, self.welch
        return (f"{self.arm} {head}: {m:.2f}% vs {r:.2f}%, difference {pp(self.diff)} (paired over "
                f"{len(self.arm_values)} shared seeds: {UNADJUSTED} {100 * LEVEL:.0f}% CI {pp(p.low)} to "
                f"{pp(p.high)}, paired t-test p = {p_text(p.p)}, Holm-adjusted p = {p_text(p.p_holm)} over "
                f"{plural(self.family, 'comparison')}; Welch's {UNADJUSTED} CI {pp(w.low)} to "
                f"{pp(w.high)}, p = {p_text(w.p)}; correlation of the arms over seeds r = {r_text(self.r)}).")


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
    """Pearson's r of the arms over the shared seeds; NaN when either has no spread."""
    if max(x) == min(x) or max(y) == min(y):
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def contrast(arm: str, values: Sequence[float], reference: str, ref_values: Sequence[float],
             metric: str) -> Contrast:
    """One arm against the reference over the same seeds, in the same order; not yet adjusted."""
    if min(len(values), len(ref_values)) < 2:
        raise ConfigError("a comparison needs at least 2 seeds per arm (--seeds)")
    if len(values) != len(ref_values):
        raise ConfigError(f"{arm} has {len(values)} seeds, {reference} {len(ref_values)}: a paired "
                          "comparison needs the same seeds in both")
    diff = sum(values) / len(values) - sum(ref_values) / len(ref_values)
    return Contrast(arm, reference, metric, list(values), list(ref_values), diff,
                    paired(values, ref_values), welch(values, ref_values), correlation(values, ref_values))


def adjust(family: Sequence[Contrast]) -> list[Contrast]:
    """The contrasts with Holm-adjusted p-values over all of them, as one family (the paired
    p-values, which decide, and Welch's, shown beside them, each adjusted on its own)."""
    by_paired = holm([c.paired.p for c in family])
    by_welch = holm([c.welch.p for c in family])
    size = sum(not math.isnan(c.paired.p) for c in family)
    return [replace(c, paired=replace(c.paired, p_holm=a), welch=replace(c.welch, p_holm=b), family=size)
            for c, a, b in zip(family, by_paired, by_welch, strict=True)]


def family(arms: Sequence[Arm], reference: str, metric: str,
           pairs: Sequence[tuple[str, str]] = ()) -> list[Contrast]:
    """Every arm but the reference against it, then each extra (arm, other) pair, seed by seed
    (not yet adjusted): what one family of comparisons holds."""
    by_name = {a.name: a for a in arms}
    ref = by_name[reference]
    for a in arms:
        if a.seeds != ref.seeds:
            raise ConfigError(f"{a.name} ran seeds {a.seeds}, {ref.name} {ref.seeds}: "
                              "a paired comparison needs the same seeds")
    vs = [(a, ref) for a in arms if a is not ref] + [(by_name[x], by_name[y]) for x, y in pairs]
    return [contrast(a.name, a.values(metric), b.name, b.values(metric), metric) for a, b in vs]


def contrasts(arms: Sequence[Arm], reference: Arm, metric: str,
              pairs: Sequence[tuple[str, str]] = ()) -> list[Contrast]:
    """Every arm but the reference against it, and each extra pair, Holm-adjusted as one family."""
    return adjust(family(arms, reference.name, metric, pairs))
