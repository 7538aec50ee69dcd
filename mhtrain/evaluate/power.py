"""What a comparison could have found, and what its one test set adds: the smallest true
difference the paired design detects at 80% power, and the binomial sampling error of an accuracy
on the test set itself. Without the first, "no significant difference" reads as "no difference";
without the second, the seed intervals read as if they covered every test set one might draw."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import optimize, stats

from mhtrain.evaluate.stats import LEVEL, Contrast, plural

POWER = 0.8  # the power a detectable difference is quoted at


def power_at(effect: float, sd: float, n: int, alpha: float = 1 - LEVEL) -> float:
    """The chance a two-sided paired t-test on `n` seeds rejects at level `alpha` when the true mean
    difference is `effect` and the per-seed differences have SD `sd` (by the noncentral t)."""
    if not sd > 0 or n < 2:
        return math.nan
    df, crit, nc = n - 1, float(stats.t.ppf(1 - alpha / 2, n - 1)), effect / sd * math.sqrt(n)
    wrong_sign = float(stats.nct.cdf(-crit, df, nc))  # negligible; scipy gives NaN far out
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(wrong_sign) else wrong_sign)


def detectable(sd: float, n: int, alpha: float = 1 - LEVEL, power: float = POWER) -> float:
    """The true mean difference a two-sided paired t-test on `n` seeds detects with `power` at
    level `alpha`, when the per-seed differences have SD `sd` (exact, by the noncentral t).
    NaN when `sd` is 0 or undefined: the test itself is then undefined."""
    if not sd > 0 or n < 2:
        return math.nan

    def short(effect: float) -> float:  # power at a true difference of `effect` SDs, less the target
        return power_at(effect, 1.0, n, alpha) - power

    high = 1.0
    while short(high) < 0:
        high *= 2
    return sd * float(optimize.brentq(short, 0.0, high, xtol=1e-12))


def binomial_se(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured once on `images` independent test images."""
    return math.sqrt(accuracy * (1 - accuracy) / images)


def _span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    a, b = f"{100 * lo:.2f}", f"{100 * hi:.2f}"
    return f"{a} pp" if a == b else f"{a}–{b} pp"


def power_line(contrasts: Sequence[Contrast]) -> str:
    """One line per table: the differences its design detects at 80% power, unadjusted and at the
    level Holm's first step needs (alpha / m), from each contrast's observed per-seed SD."""
    defined = [c for c in contrasts if c.sd > 0]
    unit = contrasts[0].unit if contrasts else "seed"
    if not defined:
        return f"Detectable difference: undefined (the per-{unit} differences have no spread)."
    n, m = len(defined[0].arm_values), max(c.family for c in contrasts) or 1
    plain = [detectable(c.sd, n) for c in defined]
    line = (f"Detectable at {100 * POWER:.0f}% power: with {plural(n, unit)} and the per-{unit} differences' "
            f"SD observed here ({_span([c.sd for c in defined])}), a paired t-test detects a true "
            f"difference of about {_span(plain)} at α = {1 - LEVEL:.2g}")
    if m > 1:
        holm = [detectable(c.sd, n, (1 - LEVEL) / m) for c in defined]
        line += f", {_span(holm)} at α/{m} (Holm's strictest step over {plural(m, 'comparison')})"
    return line + "; smaller true differences are likely to be missed."


def sampling_line(accuracy: float, images: int | None, seed_se: float, unit: str = "seed") -> str:
    """One line per table: the test set's own binomial error beside the error the intervals count.
    The intervals hold for this one test set; another draw of it would move every arm. The
    binomial SE is one arm's: the arms are tested on the same images, so it is not the error of
    their difference (the report's variance split gives that part)."""
    if not images:
        return "Test-set sampling error: not computed (the test set's size is unknown)."
    counted = "seed noise" if unit == "seed" else "search and seed noise"
    return (f"Test-set sampling error: at {100 * accuracy:.2f}% on {images:,} test images the binomial "
            f"SE of one accuracy is {100 * binomial_se(accuracy, images):.3f} pp (the {unit}-to-{unit} SE "
            f"of the reference's mean here: {100 * seed_se:.3f} pp). It is one arm's: both arms are tested "
            f"on the same images, so it is not the error of their difference. The intervals above count "
            f"{counted} only, on this one test set: they do not cover another draw of test images.")
