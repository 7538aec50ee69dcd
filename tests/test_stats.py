"""The statistics with known values: the per-arm value inside its own interval, the paired t-test
beside Welch's, the correlation of the arms, Holm over the paired p-values, the difference a
design detects at 80% power and the test set's binomial error."""

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
from mhtrain.evaluate.stats import contrast, contrasts, holm, mean_ci


def test_the_printed_accuracy_lies_inside_its_own_interval():
    # the seeds: the plain mean 96.91 printed beside [99.28, 99.95]
    values = [0.999] * 9 + [0.70]
    mean, low, high = mean_ci(values)
    assert low <= mean <= high
    logits = [math.log(v / (1 - v)) for v in values]
    assert mean == pytest.approx(1 / (1 + math.exp(-sum(logits) / 10)))
    text = with_ci(values)
    shown, bracket = text.split(" [")
    lo, hi = (float(x) for x in bracket.rstrip("]").split(", "))
    assert text.endswith("[99.28, 99.95]") and lo <= float(shown) <= hi, text


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
    assert "Welch's unadjusted CI" in c.sentence() and "r = +0.9" in c.sentence()


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
