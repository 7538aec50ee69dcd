"""Where a difference's uncertainty comes from: the search (two searches of one arm choose different
configurations), the training seed, and the test images (another draw of them would move both
arms). Estimated from N searches per arm, K shared seeds per search and every run's per-image test
outcomes, as variance components of the estimated difference (method-of-moments ANOVA, negative
estimates set to 0):

    Var(difference) ≈ σ²_search / N + σ²_seed / (N K) + σ²_images / T

σ²_search and σ²_seed from the nested one-way ANOVA of the per-run differences d_jk (search j,
seed k); σ²_images from the two-way ANOVA of the per-image differences of correctness, runs x
images (the run x image interaction is the seed part, already counted). Beside them, a seed x
image bootstrap interval of the difference: searches, then seeds within each search, and test
images, each resampled with replacement (percentile interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 2000  # resamples of the seed x image bootstrap
CHUNK = 250  # resamples drawn at once (memory: CHUNK x test images floats)


@dataclass(frozen=True)
class Split:
    """The estimated difference's variance, by source (NaN where the design cannot tell)."""

    search: float  # σ²_search / N
    seed: float  # σ²_seed / (N K)
    images: float  # σ²_images / T

    def shares(self) -> dict[str, float]:
        known = {k: v for k, v in (("search", self.search), ("training seed", self.seed),
                                   ("test images", self.images)) if not math.isnan(v)}
        total = sum(known.values())
        return {k: (v / total if total > 0 else math.nan) for k, v in known.items()}


def runs_split(d: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(σ²_search / N, σ²_seed / (N K)) from the per-run differences, one row per search (N rows
    of K seeds); σ²_search is NaN with one search, σ²_seed NaN with one seed per search."""
    x = np.asarray(d, dtype=float)
    n, k = x.shape
    within = float(((x - x.mean(1, keepdims=True)) ** 2).sum() / (n * (k - 1))) if k > 1 else math.nan
    if n < 2:
        return math.nan, within / (n * k)
    between = float(k * ((x.mean(1) - x.mean()) ** 2).sum() / (n - 1))
    search = max(0.0, (between - (0.0 if math.isnan(within) else within)) / k)
    return search / n, within / (n * k)


def images_split(m: np.ndarray) -> float:
    """σ²_images / T from per-image differences of correctness, runs x images (two-way ANOVA
    without replication: the image component, net of the run x image interaction)."""
    r, t = m.shape
    if r < 2 or t < 2:
        return math.nan
    grand, rows, cols = m.mean(), m.mean(1), m.mean(0)
    ss_total = float(((m - grand) ** 2).sum())
    ss_rows, ss_cols = t * float(((rows - grand) ** 2).sum()), r * float(((cols - grand) ** 2).sum())
    ms_cols = ss_cols / (t - 1)
    ms_res = (ss_total - ss_rows - ss_cols) / ((r - 1) * (t - 1))
    return max(0.0, (ms_cols - ms_res) / r) / t


def bootstrap(m: np.ndarray, searches: int, level: float, resamples: int = BOOTSTRAP,
              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean difference when searches, seeds within each search (the
    rows of `m` are search-major, `searches` blocks of equal size) and test images (the columns)
    are each resampled with replacement."""
    rng = np.random.default_rng(seed)
    r, t = m.shape
    per = r // searches
    out = []
    for start in range(0, resamples, CHUNK):
        b = min(CHUNK, resamples - start)
        cols = rng.multinomial(t, np.full(t, 1 / t), size=b).T.astype(np.float32)  # t x b image weights
        picked = rng.integers(0, searches, size=(b, searches))
        weights = np.zeros((b, r), dtype=np.float32)
        for i in range(b):
            for j in picked[i]:
                within = rng.integers(0, per, size=per)
                np.add.at(weights[i], j * per + within, 1.0)
        out.append(((m.astype(np.float32) @ cols).T * weights).sum(1) / (r * t))
    low, high = np.quantile(np.concatenate(out), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def split(d: Sequence[Sequence[float]], m: np.ndarray | None) -> Split:
    """The difference's variance by source; `m` (runs x images) None leaves the images' part NaN."""
    search, seed = runs_split(d)
    return Split(search, seed, math.nan if m is None else images_split(m))
