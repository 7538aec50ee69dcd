"""The statistics with known values: each arm's column is the plain mean the differences subtract,
the paired t-test beside Welch's, the correlation of the arms, Holm over the paired p-values (an
undefined test counted as p = 1), the difference a design detects at 80% power and the test set's
binomial error."""

import math
import random
from dataclasses import replace

import optuna
import pytest
from scipy import stats

from mhtrain import ConfigError
from mhtrain.evaluate.power import binomial_se, detectable, power_line, sampling_line
from mhtrain.evaluate.report import with_ci
from mhtrain.evaluate.reruns import Arm
from mhtrain.evaluate.stats import adjust, contrast, contrasts, holm, mean_ci, r_text


def test_the_column_is_the_plain_mean_with_its_t_interval_cut_to_0_100():
    # the seeds: the logit-scale column printed 99.82 while a fresh seed expects 96.91
    values = [0.999] * 9 + [0.70]
    mean, low, high = mean_ci(values)
    assert mean == pytest.approx(sum(values) / 10) == pytest.approx(0.9691)
    half = stats.t.ppf(0.975, 9) * stats.tstd(values) / math.sqrt(10)
    assert low == pytest.approx(mean - half) and high == 1.0  # mean + half = 1.037: cut at 100%
    assert with_ci(values) == "96.91 [90.15, 100.00]"
    assert mean_ci([0.5, 0.5]) == (0.5, 0.5, 0.5) and mean_ci([1.0, 1.0]) == (1.0, 1.0, 1.0)
    m, lo, hi = mean_ci([0.9912, 0.9920, 0.9931, 0.9905, 0.9918])  # the familiar symmetric interval
    assert hi - m == pytest.approx(m - lo) and m == pytest.approx(0.99172)


def test_the_verdict_the_table_and_the_difference_use_one_mean():
    """The issue's report: 99.26 − 99.06 in the columns beside a difference of +0.23."""
    arm = [0.9921, 0.9931, 0.9925, 0.9930, 0.9921]
    ref = [0.9929, 0.9856, 0.9925, 0.9917, 0.9700]  # one poor seed: the logit mean was 98.86, plain 98.65
    c = contrast("pbt", arm, "tpe", ref, "test/digit_acc")
    columns = [float(with_ci(v).split(" [")[0]) for v in (arm, ref)]
    assert abs(columns[0] - columns[1] - 100 * c.diff) <= 0.01  # equal up to the columns' rounding
    assert columns == [99.26, 98.65]
    assert f"{columns[0]:.2f}% vs {columns[1]:.2f}% (plain means), difference +0.60 pp" in c.sentence()


def test_a_correlation_needs_three_seeds():
    two = contrast("a", [0.91, 0.95], "r", [0.90, 0.93], "m")  # r over 2 seeds is always +1 or -1
    assert math.isnan(two.r) and "r = n/a (< 3 seeds)" in two.sentence()
    assert r_text(1.0, 2) == "n/a (< 3 seeds)" and r_text(math.nan, 5) == "n/a (no spread)"
    three = contrast("a", [0.91, 0.95, 0.93], "r", [0.90, 0.93, 0.92], "m")
    assert three.r == pytest.approx(stats.pearsonr([0.91, 0.95, 0.93], [0.90, 0.93, 0.92]).statistic)


def test_an_undefined_test_counts_as_p_1_and_stays_in_the_family():
    """One rule for adjust() and the confirmation: no spread is p = 1, still one of m."""
    assert holm([math.nan, 0.02, 0.03]) == pytest.approx([1.0, 0.06, 0.06])  # m = 3, not 2
    assert holm([math.nan, 0.02, 0.03]) == holm([1.0, 0.02, 0.03])
    flat = contrast("a", [0.91, 0.92, 0.93], "r", [0.90, 0.91, 0.92], "m")  # +1 pp on every seed
    live = contrast("b", [0.93, 0.95, 0.96], "r", [0.90, 0.91, 0.92], "m")
    got = adjust([flat, live])
    assert [c.family for c in got] == [2, 2] and got[1].paired.p_holm == pytest.approx(2 * live.paired.p)
    assert math.isnan(got[0].paired.p) and got[0].paired.p_holm == 1.0
    assert got[0].verdict() == "cannot be judged"


def test_paired_beside_welch_with_known_values():
    arm = [0.9930, 0.9921, 0.9935, 0.9918, 0.9926]
    ref = [0.9915, 0.9910, 0.9922, 0.9904, 0.9913]  # every seed lower, by 1.2 to 1.5 points of 1,000
    c = contrast("a", arm, "r", ref, "test/digit_acc")
    d = [x - y for x, y in zip(arm, ref, strict=True)]
    mean, sd = sum(d) / 5, stats.tstd(d)
    t = mean / (sd / math.sqrt(5))
    assert c.diff == pytest.approx(mean) and c.sd == pytest.approx(sd)
    assert c.paired.p == pytest.approx(2 * stats.t.sf(abs(t), 4))
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert (c.paired.low, c.paired.high) == pytest.approx((mean - half, mean + half))
    assert c.r == pytest.approx(stats.pearsonr(arm, ref).statistic)
    assert c.r > 0.9 and c.paired.p < 1e-4 < c.welch.p  # the pairing removes the shared seed noise
    assert c.paired.high - c.paired.low < c.welch.high - c.welch.low
    assert "paired over 5 shared seeds: unadjusted 95% CI" in c.sentence()
    assert "Welch's unadjusted CI" in c.sentence() and "over seeds r = +0.9" in c.sentence()


def test_differences_without_spread_cannot_be_judged_and_unequal_seeds_are_refused():
    c = contrast("a", [0.91, 0.92, 0.93], "r", [0.90, 0.91, 0.92], "m")  # +1 pp on every seed
    assert math.isnan(c.paired.p) and c.verdict() == "cannot be judged" and not math.isnan(c.welch.p)
    assert "n/a (no spread)" in c.sentence()
    with pytest.raises(ConfigError, match="same seeds"):
        contrast("a", [0.9, 0.91, 0.92], "r", [0.9, 0.91], "m")
    study = optuna.create_study()
    a = Arm(study, [1, 2], [{"m": 0.9}, {"m": 0.8}], "a")
    r = Arm(study, [1, 3], [{"m": 0.9}, {"m": 0.7}], "r")
    with pytest.raises(ConfigError, match="same seeds"):
        contrasts([a, r], r, "m")


def test_holm_decides_on_the_paired_p_values_and_adjusts_welch_beside():
    ref = [0.90, 0.91, 0.92, 0.91]
    values = {"a": [0.93, 0.945, 0.95, 0.94], "b": [0.90, 0.92, 0.935, 0.915], "r": ref}
    arms = {n: Arm(optuna.create_study(study_name=n), [0, 1, 2, 3], [{"m": v} for v in vs])
            for n, vs in values.items()}
    got = contrasts(list(arms.values()), arms["r"], "m")
    raw = [stats.ttest_rel(values[n], ref).pvalue for n in ("a", "b")]
    assert [c.paired.p for c in got] == pytest.approx(raw)
    assert [c.paired.p_holm for c in got] == pytest.approx(holm(raw))
    assert [c.welch.p_holm for c in got] == pytest.approx(holm([c.welch.p for c in got]))
    assert {c.family for c in got} == {2} and got[0].significant


def test_detectable_difference_has_80_percent_power():
    # n = 5 seeds, SD of the differences 1: 1.68 SD by the noncentral t (the normal approximation,
    # (1.96 + 0.84) / sqrt(5) = 1.25, is too small with 4 degrees of freedom); checked by simulation
    delta = detectable(1.0, 5)
    assert delta == pytest.approx(1.682, abs=0.001)
    rng, crit, hits = random.Random(0), stats.t.ppf(0.975, 4), 0
    for _ in range(20_000):  # simulated: the share of paired t-tests that reject at that difference
        d = [rng.gauss(delta, 1.0) for _ in range(5)]
        m = sum(d) / 5
        hits += abs(m) / math.sqrt(sum((x - m) ** 2 for x in d) / 20) > crit  # sd / sqrt(5)
    assert hits / 20_000 == pytest.approx(0.8, abs=0.01)
    assert detectable(1.0, 5, 0.05 / 3) > delta  # Holm's strictest step over 3 needs more
    assert detectable(0.002, 5) == pytest.approx(0.002 * delta)  # it scales with the SD
    assert math.isnan(detectable(0.0, 5))


def test_the_test_sets_binomial_error_and_the_lines():
    assert 100 * binomial_se(0.9924, 10_000) == pytest.approx(0.0868, abs=1e-4)  # the 0.087 pp
    c = contrast("a", [0.9930, 0.9921, 0.9935, 0.9918, 0.9926], "r",
                 [0.9915, 0.9910, 0.9922, 0.9904, 0.9913], "m")
    line = power_line([c])
    assert line.startswith("Detectable at 80% power: with 5 seeds") and "Holm" not in line
    assert "Holm's strictest step over 3 comparisons" in power_line([replace(c, family=3)])
    text = sampling_line(0.9924, 10_000, 0.0004)
    assert "binomial SE of one accuracy is 0.087 pp" in text and "0.040 pp" in text
