"""The race's statistics without training: its intervals hold at every round at once, a race
between equal finalists names a winner at most alpha of the time, it finds a finalist truly
0.2 pp better (per-seed SD 0.1 pp) with the power the README states, and each ending, a failed
finalist and the export rule on known values."""

import math
import random

import pytest

from mhtrain.study.anytime import interval, martingale
from mhtrain.study.race import DEFAULT, EQUIVALENT, RUNNING, UNDECIDED, WINNER, judge

SD = 0.001  # 0.1 pp per seed and finalist
REPS = 1000


def margin(p: float, n: int) -> float:
    """Three binomial standard errors: the slack a simulated rate gets against its bound."""
    return 3 * math.sqrt(p * (1 - p) / n)


def test_the_interval_is_where_the_martingale_crosses_one_over_alpha():
    rng = random.Random(3)
    d = [rng.gauss(0.1, 1) for _ in range(8)]
    lo, hi = interval(d, 0.05)
    assert martingale(d, lo) == pytest.approx(20) == martingale(d, hi)
    assert martingale(d, (lo + hi) / 2) < 20 < martingale(d, hi + 0.01)
    assert interval(d[:2], 0.05) == (-math.inf, math.inf)  # too few rounds to bound anything
    assert interval([0.0] * 6, 0.01) == (0.0, 0.0)  # the same configuration on the same seeds


@pytest.mark.parametrize("noise", ["gauss", "t3"])
def test_the_interval_covers_the_mean_at_every_round_at_once(noise):
    rng = random.Random(7)

    def draw() -> float:
        if noise == "gauss":
            return rng.gauss(0, 1)
        return rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)  # Student t, 3 df

    misses = 0
    for _ in range(REPS):
        d: list[float] = []
        for _ in range(30):
            d.append(draw())
            lo, hi = interval(d, 0.05)
            if not lo <= 0 <= hi:
                misses += 1
                break
    assert misses / REPS <= 0.05 + margin(0.05, REPS), misses  # time-uniform: any stopping rule is fine


def simulate(means: list[float], cap: int, delta: float = 0.002, seed: int = 0) -> list:
    rng = random.Random(seed)
    arms = [f"trial {i}" for i in range(len(means) - 1)] + [DEFAULT]
    out = []
    for _ in range(REPS):
        draws = {a: [rng.gauss(m, SD) for _ in range(cap)] for a, m in zip(arms, means, strict=True)}
        out.append(judge(arms, draws, {}, True, delta, cap, resamples=0))
    return out


def test_equal_finalists_name_a_winner_at_most_alpha_of_the_time():
    verdicts = simulate([0.99] * 4, cap=20)
    wrong = sum(v.ending == WINNER for v in verdicts) / REPS
    assert wrong <= 0.05 + margin(0.05, REPS)
    assert all(v.ending in (EQUIVALENT, UNDECIDED) for v in verdicts if v.ending != WINNER)


@pytest.mark.parametrize(("cap", "power"), [(10, 0.20), (20, 0.90)])  # the README's table: 24% and 94%
def test_a_finalist_truly_0_2_pp_better_is_found_with_the_stated_power(cap, power):
    verdicts = simulate([0.992, 0.990, 0.990, 0.990], cap=cap)
    found = sum(v.winner == "trial 0" for v in verdicts) / REPS
    assert found >= power, found
    assert all(v.winner in (None, "trial 0") for v in verdicts)


def test_equivalence_is_claimed_wrongly_at_most_alpha_of_the_time():
    # the two differ by 0.3 pp, more than delta = 0.2 pp: "equivalent" would be a wrong claim
    verdicts = simulate([0.993, 0.990], cap=30)
    assert sum(v.ending == EQUIVALENT for v in verdicts) / REPS <= 0.05 + margin(0.05, REPS)


def test_each_ending_on_known_values():
    arms = ["trial 4", "trial 1", DEFAULT]
    step = [0.0001 * (i % 3) for i in range(12)]
    clear = {"trial 4": [0.99 + s for s in step], "trial 1": [0.98 + s for s in step[::-1]],
             DEFAULT: [0.95 + s for s in step]}
    v = judge(arms, clear, {}, True, 0.002, 12)
    assert v.ending == WINNER and v.winner == "trial 4" == v.chosen and v.rounds < 12
    assert set(v.eliminated) == {"trial 1", DEFAULT} and v.to_train() == []
    assert v.bought[0] == "trial 4" and v.bought[2] > 0  # tuning bought more than nothing
    assert v.lines("val/digit_acc")[-1].startswith("export hands over trial 4: the race's winner")
    same = {a: [0.99 + s for s in step] for a in arms}
    v = judge(arms, same, {}, True, 0.002, 12)
    assert v.ending == EQUIVALENT and v.headline().startswith("tuning is not shown to beat the default")
    short = {a: xs[:3] for a, xs in clear.items()}
    v = judge(arms, short, {}, True, 0.002, 12)
    assert v.ending == RUNNING and v.to_train() == arms and v.rounds == 3
    v = judge(arms, short, {}, True, 0.002, 3)
    assert v.ending == UNDECIDED
    assert "the same command with --confirm-seeds 6 continues the same race" in v.headline()
    # a minimized metric: the lowest mean leads
    losses = {a: [1 - x for x in xs] for a, xs in clear.items()}
    assert judge(arms, losses, {}, False, 0.002, 12).winner == "trial 4"


def test_a_failed_finalist_leaves_the_race_and_is_never_chosen():
    arms = ["trial 0", "trial 1", DEFAULT]
    values = {"trial 0": [0.5], "trial 1": [0.9, 0.91, 0.9], DEFAULT: [0.9, 0.9, 0.91]}
    v = judge(arms, values, {"trial 0": "seed 5: non-finite val/loss (nan)"}, False, 0.002, 3)
    assert "trial 0" not in v.alive and v.chosen != "trial 0" and "trial 0" not in v.means
    assert "failed (seed 5: non-finite val/loss (nan)), out of the race" in "\n".join(v.lines("val/loss"))


def test_without_a_winner_export_takes_the_best_fresh_seed_mean_not_the_search_rank():
    arms = ["trial 0", "trial 1", "trial 2", DEFAULT]  # search order: trial 0 ranked first
    rng = random.Random(1)
    values = {a: [0.99 + rng.gauss(0, SD) + 0.0004 * (a == "trial 2") for _ in range(6)] for a in arms}
    v = judge(arms, values, {}, True, 0.002, 6)
    assert v.ending == UNDECIDED and v.chosen == max(v.alive, key=lambda a: v.means[a]) == "trial 2"
    assert v.p_best["trial 2"] == max(v.p_best.values()) and all(0 <= p <= 1 for p in v.p_near.values())
