"""The statistics of an evaluation: a mean accuracy with an interval that stays inside [0, 1],
Welch's t-test for an arm against a reference, and Holm's correction over a family of them."""

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
            "stays inside 0–100%")


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean accuracy and its confidence interval, both in [0, 1]. A raw-scale Student-t interval
    runs past 100% with few, spread-out seeds (88.21 [56.83, 119.59]); the t interval (n - 1
    degrees of freedom) of the logits, mapped back, stays inside (0, 1), lopsided near the edges
    as an accuracy's uncertainty is. Values without spread give a zero-width interval."""
    if not values:
        raise ValueError("mean_ci of no values")
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"mean_ci takes accuracies in [0, 1], got {list(values)}")
    mean = sum(values) / len(values)
    clipped = [min(max(v, EDGE), 1 - EDGE) for v in values]
    logits = [math.log(p / (1 - p)) for p in clipped]
    if len(values) < 2 or max(logits) - min(logits) == 0:
        return mean, mean, mean
    center, sem = sum(logits) / len(logits), stats.sem(logits)
    low, high = stats.t.interval(level, len(values) - 1, loc=center, scale=sem)
    return mean, _expit(float(low)), _expit(float(high))


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Contrast:
    """One arm minus the reference in mean test `metric`: Welch's t-test (difference and its
    interval on the raw scale, in points), Holm-adjusted over the `family` it was judged in."""

    arm: str
    reference: str
    metric: str
    arm_values: list[float]
    reference_values: list[float]
    diff: float
    low: float
    high: float
    p: float
    p_holm: float = math.nan
    family: int = 0  # the defined p-values Holm adjusted over

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < 1 - LEVEL

    def verdict(self) -> str:
        """How the arm did, in a word or three: improves, hurts, no significant difference."""
        if math.isnan(self.p):
            return "cannot be judged"
        if self.significant:
            return "improves" if self.diff > 0 else "hurts"
        return "no significant difference"

    def sentence(self) -> str:
        """One sentence to quote: the verdict, both means, the difference and its statistics."""
        m = 100 * sum(self.arm_values) / len(self.arm_values)
        r = 100 * sum(self.reference_values) / len(self.reference_values)
        than = f"{self.metric} compared with {self.reference}"
        head = {"cannot be judged": f"cannot be judged on {than} (the runs have no spread)",
                "no significant difference": f"makes no significant difference to {than}",
                }.get(self.verdict(), f"{self.verdict()} {than}")
        return (f"{self.arm} {head}: {m:.2f}% vs {r:.2f}%, difference {pp(self.diff)} ({100 * LEVEL:.0f}% "
                f"CI {pp(self.low)} to {pp(self.high)}, Welch t-test p = {self.p:.3g}, Holm-adjusted "
                f"p = {self.p_holm:.3g} over {plural(self.family, 'comparison')}; "
                f"{len(self.arm_values)} vs {len(self.reference_values)} seeds).")


def contrast(arm: str, values: Sequence[float], reference: str, ref_values: Sequence[float],
             metric: str) -> Contrast:
    """Welch's t-test of one arm's values against the reference's, not yet adjusted. Written out
    rather than scipy's, which warns about a sample without spread; both samples without spread
    leave the test undefined (interval a point, p NaN)."""
    if min(len(values), len(ref_values)) < 2:
        raise ConfigError("a comparison needs at least 2 seeds per arm (--seeds)")
    x, y = values, ref_values
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((v - mx) ** 2 for v in x) / (len(x) - 1) / len(x)  # squared standard errors
    vy = sum((v - my) ** 2 for v in y) / (len(y) - 1) / len(y)
    diff, se = mx - my, math.sqrt(vx + vy)
    low, high, p = diff, diff, math.nan
    if se > 0:
        df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
        low, high, p = diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, df))
    return Contrast(arm, reference, metric, list(values), list(ref_values), diff, low, high, p)


def adjust(family: Sequence[Contrast]) -> list[Contrast]:
    """The contrasts with Holm-adjusted p-values over all of them, as one family."""
    adjusted = holm([c.p for c in family])
    size = sum(not math.isnan(c.p) for c in family)
    return [replace(c, p_holm=p, family=size) for c, p in zip(family, adjusted, strict=True)]


def contrasts(arms: Sequence[Arm], reference: Arm, metric: str) -> list[Contrast]:
    """Every arm but the reference against it, p-values Holm-adjusted as one family."""
    ref = reference.values(metric)
    return adjust([contrast(a.name, a.values(metric), reference.name, ref, metric)
                   for a in arms if a.name != reference.name])

