"""Confidence sequences for a mean of paired differences: intervals that hold at every round at
once, so a race may look after each seed, stop when it likes and be continued later with more
seeds, and its error rate is still the one it states.

The method is Lai's (1976) t-mixture confidence sequence for a Gaussian mean with unknown
variance, as derived in Wang and Ramdas (2023), "Anytime-valid t-tests and confidence sequences
for Gaussian means with unknown variance" (arXiv:2310.03722). For the n differences d_1..d_n and
a candidate mean m, with S = sum(d - m), V = sum((d - m)^2) and a prior precision c^2 on the
effect in units of the noise,

    M_n(m) = sqrt(c^2 / (n + c^2)) * (1 - S^2 / ((n + c^2) V)) ^ (-n / 2)

is a nonnegative martingale with M_0 = 1 when m is the true mean (it is the likelihood ratio of
the scale-invariant statistics, mixed over effects ~ N(0, 1/c^2)). By Ville's inequality
P(M_n(m) >= 1/alpha for some n) <= alpha, so {m : M_n(m) < 1/alpha} covers m at every n at once.
It is an interval, closed form below, bounded from the round where the data can exclude the
rest of the line (5 seeds at alpha = 0.05 / 6 with the default c).

Why not a bounded-range betting sequence: accuracy differences lie in [-1, 1], but seeds move
them by ~0.1 pp; a bet must survive the worst case of the range, so such intervals stay ~100x
wider than the noise for any affordable number of seeds. The price of this one is an assumption:
paired differences roughly Gaussian, which `tests/test_race_stats.py` checks against heavier
tails too."""

from __future__ import annotations

import math
from collections.abc import Sequence

C = 0.5  # prior sd of the effect = 1/C = 2 noise sds: the size a race of a few seeds can see


def interval(d: Sequence[float], alpha: float, c: float = C) -> tuple[float, float]:
    """The (1 - alpha) confidence sequence's interval for the mean of `d` after len(d) rounds:
    (-inf, inf) until the data can bound it; a point when the differences do not vary (the same
    configuration on the same seeds gives the same value)."""
    n = len(d)
    if n < 2:
        return -math.inf, math.inf
    mean = sum(d) / n
    ss = sum((x - mean) ** 2 for x in d)
    # M_n(m) < 1/alpha  <=>  R = S^2 / V < B, with B as below; R = n^2 D^2 / (ss + n D^2), D = mean - m
    q = (alpha * math.sqrt(c * c / (n + c * c))) ** (2 / n)
    b = (n + c * c) * (1 - q)
    if b >= n:  # R <= n always: no m is excluded yet
        return -math.inf, math.inf
    half = math.sqrt(b * ss / (n * (n - b)))
    return mean - half, mean + half


def martingale(d: Sequence[float], m: float, c: float = C) -> float:
    """M_n(m) itself: the evidence against mean m after len(d) rounds (for tests and plots)."""
    n = len(d)
    s = sum(x - m for x in d)
    v = sum((x - m) ** 2 for x in d)
    if n == 0 or v == 0:  # no rounds, or every difference equals m exactly: no evidence against it
        return 1.0
    return math.sqrt(c * c / (n + c * c)) * (1 - s * s / ((n + c * c) * v)) ** (-n / 2)
