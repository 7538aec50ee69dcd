"""The variance split of a difference (search, training seed, test images) and the seed x image
bootstrap, on data whose components are known; the per-image outcomes' storage format."""

import math

import numpy as np
import pytest

from mhtrain.evaluate import predictions, variance


def test_search_and_seed_parts_are_the_nested_anova():
    d = [[0.010, 0.012, 0.008], [0.002, 0.004, 0.000], [0.006, 0.007, 0.005]]  # 3 searches x 3 seeds
    x = np.array(d)
    within = sum(((r - r.mean()) ** 2).sum() for r in x) / (3 * 2)
    between = 3 * ((x.mean(1) - x.mean()) ** 2).sum() / 2
    search, seed = variance.runs_split(d)
    assert seed == pytest.approx(within / 9) and search == pytest.approx((between - within) / 3 / 3)
    # the two parts add up to the variance of the mean the t-test over searches uses
    assert search + seed == pytest.approx(x.mean(1).var(ddof=1) / 3)
    assert math.isnan(variance.runs_split([[0.01, 0.02, 0.0]])[0])  # one search: no search part
    assert variance.runs_split([[0.01, 0.01], [0.01, 0.01]]) == (0.0, 0.0)


def test_the_images_part_recovers_a_planted_image_effect():
    rng = np.random.default_rng(0)
    runs, images = 10, 20_000
    image_effect = rng.normal(0, 0.3, images)  # what another draw of test images changes
    noise = rng.normal(0, 0.5, (runs, images))  # run x image: the seed's part, already counted
    m = image_effect[None, :] + noise + rng.normal(0, 0.01, (runs, 1))
    assert variance.images_split(m) == pytest.approx(0.3**2 / images, rel=0.05)
    assert variance.images_split(noise) == pytest.approx(0.0, abs=0.02**2 / images)  # none planted
    shares = variance.Split(1e-6, 3e-6, math.nan).shares()
    assert shares == pytest.approx({"search": 0.25, "training seed": 0.75})


def test_the_bootstrap_covers_searches_seeds_and_images():
    rng = np.random.default_rng(1)
    images = 4000
    only_images = np.tile(rng.normal(0.01, 0.2, images), (6, 1))  # every run the same: images alone
    low, high = variance.bootstrap(only_images, searches=2, level=0.95, resamples=1000)
    se = only_images[0].std(ddof=1) / math.sqrt(images)
    assert (high - low) / (2 * 1.96) == pytest.approx(se, rel=0.15)
    assert low < only_images.mean() < high
    # searches that disagree widen it far beyond the images' part
    apart = only_images + np.array([[0.05]] * 3 + [[-0.05]] * 3)
    wide = variance.bootstrap(apart, searches=2, level=0.95, resamples=1000)
    assert wide[1] - wide[0] > 5 * (high - low)


def test_per_image_outcomes_round_trip():
    correct = np.array([True, False, True, True, False, False, True, False, True, True, True])
    text = predictions.encode(correct)
    assert (predictions.decode(text, len(correct)) == correct).all()
    record = {"test/images": 11, "test/digit_correct": text,
              "test/thickness_correct": predictions.encode(~correct)}
    assert predictions.outcomes(record, "test/digit_acc").mean() == pytest.approx(correct.mean())
    assert (predictions.outcomes(record, "test/avg_acc") == 0.5).all()
    assert predictions.outcomes({"test/digit_acc": 0.9}, "test/digit_acc") is None  # stored before
    with pytest.raises(ValueError, match="16 stored outcomes, 20 test images"):
        predictions.decode(text, 20)
