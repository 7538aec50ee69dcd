"""The race that turns a search's finalists into an answer: every round trains each surviving
finalist (and the experiment's default) on one fresh seed, pairs them by that seed, and after
each round drops any finalist whose paired difference to the leader is confidently below 0. It
ends with a winner, with the survivors equivalent within delta, or undecided at the seed cap.

This module is the judge only: given the values stored so far it replays the race round by
round (deterministic, so a resumed or extended race reaches the same state without re-training)
and says which arms the next round must train. No Optuna, no training.

Error control (`anytime.interval`, valid however often it is looked at):
- elimination uses each pair's interval at alpha / (n - 1): the truly best arm is dropped only if
  one of its n - 1 pairs misses, so a wrong winner is named with probability <= alpha;
- equivalence needs every surviving pair's interval at alpha / (n (n - 1) / 2) inside
  [-delta, delta], so a claimed equivalence is wrong with probability <= alpha."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mhtrain.study.anytime import interval

ALPHA = 0.05
DEFAULT = "default"  # the arm that trains the experiment's own values, before any search
WINNER, EQUIVALENT, UNDECIDED, RUNNING = "winner", "equivalent", "undecided", "running"
BOOTSTRAP = 2000  # resamples of the rounds for P(best)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


@dataclass(frozen=True)
class Verdict:
    """Where the race stands after `rounds` complete rounds (values in `better`-is-higher units are
    never shown: every number here is in the metric's own units and direction)."""

    arms: list[str]
    rounds: int
    cap: int
    delta: float
    ending: str  # WINNER, EQUIVALENT, UNDECIDED or RUNNING (more rounds to train)
    alive: list[str]  # in the race after the last complete round, best mean first
    eliminated: dict[str, int]  # arm -> the round it was dropped in
    failed: dict[str, str]  # arm -> why its run failed (it left the race)
    winner: str | None
    chosen: str | None  # what export hands over (None only if every arm failed)
    rule: str  # why `chosen`, in words
    means: dict[str, float]  # each arm's plain mean over the rounds it ran
    # per round: arm -> its difference to that round's leader, (lo, hi) at the elimination level
    history: list[dict[str, tuple[float, float]]] = field(default_factory=list)
    p_best: dict[str, float] = field(default_factory=dict)
    p_near: dict[str, float] = field(default_factory=dict)  # P(within delta of the best)
    # chosen tuned arm - default: (mean difference, lo, hi) at the elimination level, over shared rounds
    bought: tuple[str, float, float, float] | None = None
    values: dict[str, list[float]] = field(default_factory=dict)  # the runs judged, per arm in seed order
    sign: float = 1.0  # +1 when the metric is maximized
    level: str = ""  # the elimination intervals' level, in words

    def to_train(self) -> list[str]:
        """The arms the next round trains (none once the race has ended)."""
        return list(self.alive) if self.ending == RUNNING else []

    def headline(self) -> str:
        """The verdict in one line; what tuning bought comes first when the default wins or ties."""
        lead = ("the default beats every tuned configuration: " if self.winner == DEFAULT else
                "tuning is not shown to beat the default (still in the race): " if DEFAULT in self.alive
                else "")
        if self.ending == WINNER:
            return f"{lead}winner: {self.winner}, confidently better than every other finalist"
        if self.ending == EQUIVALENT:
            return (f"{lead}equivalent within {self.delta:g}: {', '.join(self.alive)} (every pair's "
                    "interval inside the margin)")
        return (f"{lead}undecided after {self.rounds} seed(s): {', '.join(self.alive)} still in the race; "
                f"the same command with --confirm-seeds {2 * self.cap} continues the same race")

    def lines(self, metric: str) -> list[str]:
        """The race for the console: each arm's fate, the verdict, what tuning bought, the choice."""
        out = [f"race on {self.rounds} fresh seed(s) ({metric}, plain mean over the seeds each arm ran; "
               f"P(best), P(within {self.delta:g} of the best) from a paired bootstrap over seeds):"]
        for a in self.arms:
            fate = (f"failed ({self.failed[a]}), out of the race" if a in self.failed else
                    f"dropped after round {self.eliminated[a]}" if a in self.eliminated else "in the race")
            stats = (f"{self.means[a]:.4f}, P(best) {self.p_best[a]:.2f}, P(near) {self.p_near[a]:.2f}, "
                     if a in self.means else "")
            out.append(f"  {a}: {stats}{fate}")
        out.append(self.headline())
        if self.bought is not None:
            arm, d, lo, hi = self.bought
            seen = ("no difference detected" if lo <= 0 <= hi else
                    "tuning helped" if (d > 0) == (self.sign > 0) else "tuning hurt")
            out.append(f"tuning bought: {arm} - default = {d:+.4f} [{lo:+.4f}, {hi:+.4f}] (anytime-valid "
                       f"interval, {self.level}): {seen}")
        if self.chosen is not None:
            out.append(f"export hands over {self.chosen}: {self.rule}")
        return out


def judge(arms: Sequence[str], values: Mapping[str, Sequence[float]], failed: Mapping[str, str],
          maximize: bool, delta: float, cap: int, alpha: float = ALPHA,
          resamples: int = BOOTSTRAP) -> Verdict:
    """Replay the race on the stored per-round `values` (arm -> its value per seed, in seed order)
    and say where it stands. An arm in `failed` left the race when its run failed. `resamples`
    draws estimate P(best) (0: not estimated, for simulations of many races)."""
    sign = 1.0 if maximize else -1.0
    n = len(arms)
    a_elim, a_eq = alpha / max(n - 1, 1), alpha / max(n * (n - 1) // 2, 1)
    alive = [a for a in arms if a not in failed]
    eliminated: dict[str, int] = {}
    history: list[dict[str, tuple[float, float]]] = []
    ending, r = RUNNING, 0
    while ending == RUNNING and alive and min(len(values.get(a, ())) for a in alive) > r and r < cap:
        r += 1
        score = {a: sign * mean(values[a][:r]) for a in alive}
        leader = max(alive, key=lambda a: (score[a], -arms.index(a)))
        now: dict[str, tuple[float, float]] = {}
        for a in alive:
            d = [sign * (x - y) for x, y in zip(values[a][:r], values[leader][:r], strict=True)]
            now[a] = interval(d, a_elim) if a != leader else (0.0, 0.0)
            if a != leader and now[a][1] < 0:
                eliminated[a] = r
        history.append({a: (sign * lo, sign * hi) if sign > 0 else (-hi, -lo) for a, (lo, hi) in now.items()})
        alive = sorted((a for a in alive if a not in eliminated), key=lambda a: (-score[a], arms.index(a)))
        if len(alive) == 1 and eliminated:
            ending = WINNER
        elif len(alive) > 1 and all(_within(values[a][:r], values[b][:r], a_eq, delta)
                                    for a in alive for b in alive if a < b):
            ending = EQUIVALENT
        elif r >= cap or len(alive) == 1:  # the cap, or every other arm failed: nothing to race
            ending = UNDECIDED
    if not alive:
        ending = UNDECIDED
    means = {a: mean(values[a]) for a in arms if a not in failed and values.get(a)}
    winner = alive[0] if ending == WINNER else None
    chosen, rule = _choose(alive, winner, ending)
    p_best, p_near = _bootstrap([a for a in arms if a in means], values, sign, delta, resamples)
    return Verdict(list(arms), r, cap, delta, ending, alive, eliminated, dict(failed), winner, chosen, rule,
                   means, history, p_best, p_near, _bought(chosen, arms, values, failed, sign, a_elim),
                   {a: list(values[a]) for a in means}, sign,
                   f"{1 - alpha:.0%} jointly over each arm's {n - 1} pair(s)")


def _within(x: Sequence[float], y: Sequence[float], alpha: float, delta: float) -> bool:
    lo, hi = interval([a - b for a, b in zip(x, y, strict=True)], alpha)
    return -delta <= lo and hi <= delta


def _choose(alive: Sequence[str], winner: str | None, ending: str) -> tuple[str | None, str]:
    if winner is not None:
        return winner, "the race's winner: every other finalist was confidently worse on fresh seeds"
    if not alive:
        return None, "no finalist trained: every run failed"
    what = {EQUIVALENT: "the survivors are equivalent", UNDECIDED: "the race is undecided",
            RUNNING: "the race is unfinished"}[ending]
    return alive[0], f"{what}; the best mean over fresh seeds among the finalists still in the race"


def _bootstrap(arms: Sequence[str], values: Mapping[str, Sequence[float]], sign: float,
               delta: float, resamples: int) -> tuple[dict[str, float], dict[str, float]]:
    """P(best) and P(within delta of the best): the rounds resampled with replacement (paired:
    one draw picks a seed for every arm), each arm's mean over the drawn rounds it ran."""
    if not arms or not resamples:
        return {}, {}
    rounds = max(len(values[a]) for a in arms)
    rng = random.Random(0)
    best = dict.fromkeys(arms, 0)
    near = dict.fromkeys(arms, 0)
    for _ in range(resamples):
        draw = [rng.randrange(rounds) for _ in range(rounds)]
        score = {}
        for a in arms:
            got = [values[a][i] for i in draw if i < len(values[a])]
            if got:
                score[a] = sign * mean(got)
        top = max(score.values())
        for a, s in score.items():
            best[a] += s == top
            near[a] += s >= top - delta
    return ({a: best[a] / resamples for a in arms}, {a: near[a] / resamples for a in arms})


def _bought(chosen: str | None, arms: Sequence[str], values: Mapping[str, Sequence[float]],
            failed: Mapping[str, str], sign: float, alpha: float) -> tuple[str, float, float, float] | None:
    """The tuned answer against the default on the rounds both ran: what tuning bought."""
    tuned = [a for a in arms if a != DEFAULT and a not in failed and values.get(a)]
    if DEFAULT not in arms or DEFAULT in failed or not values.get(DEFAULT) or not tuned:
        return None
    pick = chosen if chosen in tuned else max(tuned, key=lambda a: sign * mean(values[a]))
    r = min(len(values[pick]), len(values[DEFAULT]))
    d = [x - y for x, y in zip(values[pick][:r], values[DEFAULT][:r], strict=True)]
    lo, hi = interval(d, alpha)
    return pick, mean(d), lo, hi
