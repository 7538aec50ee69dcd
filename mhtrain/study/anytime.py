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
tails too.

The same martingale is the anytime-valid t-test of a later look at a comparison (`anytime`,
below): one method for every sequential look in the project, in the one module that `study/` (the
race) and `evaluate/` (compare's looks) both import.
A second look at a question, done right: an anytime-valid test of a mean difference, whose
chance of ever declaring a false difference stays at most alpha however many looks are taken
and whenever the analyst decides to stop or add seeds.

The per-unit differences (per seed, or per repeated search) are taken as Gaussian with unknown
mean and variance, as the paired t-test takes them. For a hypothesised mean mu0 the test statistic
is the Bayes factor of the t statistic with a normal prior of SD `PRIOR_SD` on the standardized
effect (mu - mu0) / sigma, the scale mixed out by its right Haar measure:

    BF_n = (1 + n c²)^(-1/2) · ((1 + t²/ν) / (1 + t²/(ν (1 + n c²))))^((ν + 1)/2),  ν = n - 1

Under mu = mu0 it is a nonnegative martingale starting at 1 in the filtration of the scale-free
statistics (it is the likelihood ratio of the maximal invariant), so by Ville's inequality
P(BF_n >= 1/alpha for some n) <= alpha (Pérez-Ortiz, Lardy, de Heide and Grünwald, "E-statistics,
group invariance and anytime-valid testing", Ann. Statist. 2024; Wang and Ramdas, "Anytime-valid
t-tests and confidence sequences for Gaussian means with unknown variance", Sequential Analysis
2025). Looks decided on the reported t statistics and p-values are stopping times of that
filtration. Inverting it gives a confidence sequence: at every n the set of mu0 with
BF_n(mu0) < 1/alpha is an interval around the mean; its running intersection over n and the
running minimum of 1/BF_n(0) (the anytime-valid p-value) agree with each other at every look.

It is the statistic, and the prior, of the confirmation race's intervals: one method for every
sequential look in the project.

A prefix whose differences have no spread carries no evidence here (it is skipped, which only
lowers the running maximum of BF and so keeps the guarantee)."""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95  # of every confidence interval; also the significance threshold 1 - LEVEL
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


PRIOR_SD = 1 / C  # SD of the standardized effect under the alternative: the confirmation race's prior
METHOD = (f"anytime-valid t-test (Bayes factor with a normal prior of SD {PRIOR_SD:g} on the "
          "standardized effect, scale mixed by its Haar measure; Ville's inequality; Pérez-Ortiz et al. "
          "2024, Wang and Ramdas 2025)")


def _moments(d: Sequence[float]) -> tuple[int, float, float]:
    n = len(d)
    mean = sum(d) / n
    return n, mean, math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))


def log_bayes_factor(d: Sequence[float], mu0: float = 0.0, c: float = PRIOR_SD) -> float:
    """log BF_n of the differences `d` against mean `mu0`; 0 (no evidence) below 2 units or
    without spread. BF_n is the race's martingale, one implementation."""
    if len(d) < 2 or _moments(d)[2] == 0:
        return 0.0
    return math.log(martingale(d, mu0, 1 / c))


def radius(n: int, sd: float, alpha: float, c: float = PRIOR_SD) -> float:
    """Half-width of the confidence sequence at n units with sample SD `sd` (the race's interval,
    which depends on the data through n and sd only); infinite where no mean can yet be excluded."""
    if n < 2 or sd == 0:
        return math.inf
    lo, hi = interval(_spread(n, sd), alpha, 1 / c)
    return (hi - lo) / 2


def _spread(n: int, sd: float) -> list[float]:
    """n values with mean 0 and sample SD `sd`: the interval's half-width needs nothing else."""
    x = sd * math.sqrt((n - 1) / 2)
    return [x, -x] + [0.0] * (n - 2)


def anytime(d: Sequence[float], alpha: float, c: float = PRIOR_SD) -> tuple[float, float, float]:
    """The anytime-valid interval and p-value of mean(d) after every prefix of `d` (in the order
    the units were added): the running intersection of the confidence sequence and
    min(1, min over n of 1/BF_n(0)), as (low, high, p). Differences without spread leave it
    undefined (a point, p NaN), as the paired t-test does."""
    n_all, mean_all, sd_all = _moments(d)
    if sd_all == 0:
        return mean_all, mean_all, math.nan
    low, high, best = -math.inf, math.inf, 0.0
    for n in range(2, n_all + 1):
        _, mean, sd = _moments(d[:n])
        r = radius(n, sd, alpha, c)
        low, high = max(low, mean - r), min(high, mean + r)
        best = max(best, log_bayes_factor(d[:n], 0.0, c))
    if low > high:  # the sequence ran empty, a miss of probability <= alpha: show the last interval
        r = radius(n_all, sd_all, alpha, c)
        low, high = mean_all - r, mean_all + r
    return low, high, min(1.0, math.exp(-best))
