"""The harness checked against real training noise (`make calibrate`). Many repetitions of one
configuration, each a small comparison judged by the very test `compare` uses:

- A/A: the same configuration as two arms. Paired seeds would train identical runs, so the second
  arm trains seeds of its own; the pairs are then independent, which is the null the paired test
  assumes. How often a difference is declared must be at most 5%, within its binomial margin.
- A/B: the same configuration against itself with a planted handicap (default: the learning
  rate x 0.1), paired by seed as `compare` pairs arms. How often the handicap is detected, against
  the power the report's detectable difference implies for the handicap's observed size.
- Later looks (`extend_to` seeds): the A/A arms trained further, judged as `compare` would judge
  --seeds K then --seeds K2: both looks by the fixed t (peeking), the second by the anytime-valid
  test (--extend), both by it (--sequential).

Runs are appended to `runs.jsonl` as they end, so an interrupted calibration resumes; its plan is
stored beside them and a different plan in the same folder is refused."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from mhtrain import ConfigError
from mhtrain.config import compose
from mhtrain.evaluate.power import detectable, power_at
from mhtrain.evaluate.reruns import RERUN_MODE
from mhtrain.evaluate.stats import LEVEL, contrast

ROOT = Path("runs/calibrate")


@dataclass(frozen=True)
class Plan:
    """What one calibration trains: the configuration, its handicap, repetitions and seeds."""

    experiment: str
    overrides: list[str]
    handicap: list[str]
    reps: int
    seeds: int
    extend_to: int  # seeds of the A/A arms at the second look; = seeds for none
    first_seed: int

    @property
    def block(self) -> int:
        """Seeds one repetition owns: the A/A arms' two blocks of `extend_to`."""
        return 2 * self.extend_to

    def seeds_of(self, rep: int, arm: str) -> list[int]:
        """A and B train seeds a; A' (A/A's second arm) trains seeds b."""
        start = self.first_seed + rep * self.block + (self.extend_to if arm == "A'" else 0)
        return list(range(start, start + (self.seeds if arm == "B" else self.extend_to)))


def make_plan(experiment: str, overrides: Sequence[str], handicap: Sequence[str] | None, reps: int,
              seeds: int, extend_to: int | None, first_seed: int) -> Plan:
    """Check the numbers and compose both configurations once, before anything trains; the default
    handicap is the composed learning rate x 0.1."""
    if reps < 1:
        raise ConfigError(f"--reps {reps}: must be >= 1")
    if seeds < 2:
        raise ConfigError(f"--seeds {seeds}: a paired test needs at least 2")
    extend_to = seeds if extend_to is None else extend_to
    if extend_to < seeds:
        raise ConfigError(f"--extend-to {extend_to}: must be at least --seeds {seeds}")
    if first_seed < 0:
        raise ConfigError(f"--first-seed {first_seed}: must be >= 0")
    base = compose(experiment, overrides)
    if handicap is None:
        handicap = [f"model.optimizer.lr={0.1 * float(base.model.optimizer.lr):.6g}"]
    compose(experiment, [*overrides, *handicap])
    return Plan(experiment, list(overrides), list(handicap), reps, seeds, extend_to, first_seed)


def metric_of(plan: Plan) -> str:
    return "test/" + str(compose(plan.experiment, plan.overrides).optimized_metric).removeprefix("val/")


@dataclass
class Store:
    """The runs so far, `(arm, seed) -> record`, in `out/runs.jsonl`; the plan in `out/plan.json`."""

    out: Path
    runs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, plan: Plan) -> Store:
        out.mkdir(parents=True, exist_ok=True)
        stored = out / "plan.json"
        mine = {k: v for k, v in asdict(plan).items() if k != "reps"}  # more repetitions continue it
        if stored.exists():
            theirs = {k: v for k, v in json.loads(stored.read_text()).items() if k != "reps"}
            if theirs != mine:
                raise ConfigError(f"{out} holds a calibration of another plan ({theirs}); use another --name")
        stored.write_text(json.dumps(asdict(plan), indent=1))
        store = cls(out)
        lines = (out / "runs.jsonl").read_text().splitlines() if (out / "runs.jsonl").exists() else []
        for line in lines:
            try:
                r = json.loads(line)
                store.runs[(str(r["arm"]), int(r["seed"]))] = r
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write: that run trains again
        return store

    def add(self, record: dict[str, Any]) -> None:
        with (self.out / "runs.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.runs[(record["arm"], record["seed"])] = record


def train(plan: Plan, store: Store, metric: str, say: Callable[[str], None] = print) -> float:
    """Train every run the plan lacks, repetition by repetition (a cut leaves whole repetitions);
    returns the seconds of training done now."""
    from mhtrain.train import fit  # Lightning: only once something trains

    spent = 0.0
    for rep in range(plan.reps):
        for arm in ("A", "A'", "B"):
            for seed in plan.seeds_of(rep, arm):
                if (arm, seed) in store.runs:
                    continue
                extra = plan.handicap if arm == "B" else []
                folder = store.out / "runs" / f"{'B' if arm == 'B' else 'A'}_seed{seed}"
                shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run left
                cfg = compose(plan.experiment, [*plan.overrides, *extra, f"seed={seed}",
                                                f"paths.output_dir={folder}", *RERUN_MODE])
                result = fit(cfg)
                spent += result.seconds
                store.add({"arm": arm, "seed": seed, "value": result.test[metric],
                           "seconds": round(result.seconds, 2)})
                say(f"  rep {rep + 1}/{plan.reps} {arm} seed {seed}: {metric} = {result.test[metric]:.4f} "
                    f"({result.seconds:.1f} s)")
    return spent


@dataclass(frozen=True)
class Rate:
    """How often something happened over the repetitions, with its Clopper-Pearson interval."""

    hits: int
    reps: int

    @property
    def share(self) -> float:
        return self.hits / self.reps

    def ci(self) -> tuple[float, float]:
        ci = stats.binomtest(self.hits, self.reps).proportion_ci(LEVEL, method="exact")
        return float(ci.low), float(ci.high)

    def text(self) -> str:
        low, high = self.ci()
        return (f"{self.hits} of {self.reps} ({100 * self.share:.1f}%, {100 * LEVEL:.0f}% CI "
                f"{100 * low:.1f}–{100 * high:.1f}%)")


def values(plan: Plan, store: Store, rep: int, arm: str, n: int) -> list[float]:
    return [store.runs[(arm, s)]["value"] for s in plan.seeds_of(rep, arm)[:n]]


def complete(plan: Plan, store: Store) -> int:
    """Repetitions whose every run is stored, from the first."""
    done = 0
    while done < plan.reps and all((arm, s) in store.runs for arm in ("A", "A'", "B")
                                   for s in plan.seeds_of(done, arm)):
        done += 1
    return done


def judged(plan: Plan, store: Store, metric: str, rep: int, arm: str, n: int, sequential: bool = False):
    """Arm `arm` (A' or B) against A in repetition `rep` over its first `n` seeds, as compare
    judges one contrast (one comparison: Holm leaves its p as it is)."""
    return contrast(arm, values(plan, store, rep, arm, n), "A", values(plan, store, rep, "A", n), metric,
                    sequential=sequential)


def analyse(plan: Plan, store: Store, metric: str) -> dict[str, Any]:
    """The rates over every complete repetition."""
    reps, alpha, k, k2 = complete(plan, store), 1 - LEVEL, plan.seeds, plan.extend_to
    if reps == 0:
        raise ConfigError("no complete repetition yet: nothing to analyse")

    def rate(hit: Callable[[int], bool]) -> Rate:
        return Rate(sum(hit(r) for r in range(reps)), reps)

    aa = [judged(plan, store, metric, r, "A'", k) for r in range(reps)]
    ab = [judged(plan, store, metric, r, "B", k) for r in range(reps)]
    planted = sum(c.diff for c in ab) / reps
    sd = math.sqrt(sum(c.sd**2 for c in ab) / reps)  # pooled SD of the per-seed differences
    out: dict[str, Any] = {
        "reps": reps, "seeds": k, "metric": metric,
        "aa": rate(lambda r: aa[r].paired.p < alpha),
        "ab": rate(lambda r: ab[r].paired.p < alpha and ab[r].diff < 0),
        "ab_wrong_way": rate(lambda r: ab[r].paired.p < alpha and ab[r].diff > 0),
        "planted": planted, "sd": sd, "predicted": power_at(abs(planted), sd, k, alpha),
        "detectable": sorted(detectable(c.sd, k) for c in ab)[reps // 2],
        "seconds": sum(r.get("seconds", 0.0) for r in store.runs.values()),
    }
    if k2 > k:
        late = [judged(plan, store, metric, r, "A'", k2, sequential=True) for r in range(reps)]
        early = [judged(plan, store, metric, r, "A'", k, sequential=True) for r in range(reps)]
        out.update({"k2": k2, "fixed_k2": rate(lambda r: late[r].paired.p < alpha),
                    "peeking": rate(lambda r: aa[r].paired.p < alpha or late[r].paired.p < alpha),
                    "extend": rate(lambda r: aa[r].paired.p < alpha or late[r].sequential.p < alpha),
                    "sequential": rate(lambda r: min(early[r].sequential.p, late[r].sequential.p) < alpha)})
    return out


def lines(plan: Plan, r: dict[str, Any]) -> list[str]:
    """The calibration's findings, one claim a line, each with its binomial interval."""
    aa, ab, alpha = r["aa"], r["ab"], 1 - LEVEL
    fits = "yes" if aa.ci()[0] <= alpha else "no"
    out = [f"Setup: `{plan.experiment}` {' '.join(f'`{o}`' for o in plan.overrides) or '(its defaults)'}; "
           f"{r['reps']} repetitions of {r['seeds']} seeds per arm, judged as compare judges one contrast "
           f"(paired t-test, α = {alpha:.2g}) on {r['metric']}; {r['seconds'] / 3600:.1f} h of training "
           "in all.",
           f"A/A (the same configuration as both arms, independent seeds): a difference declared in "
           f"{aa.text()}; at most {100 * alpha:.0f}% within its binomial margin: {fits}.",
           f"A/B (handicap {' '.join(f'`{o}`' for o in plan.handicap)}, paired by seed): detected in "
           f"{ab.text()} (the wrong way in {r['ab_wrong_way'].hits}). The handicap's size here: "
           f"{100 * r['planted']:+.2f} pp, per-seed SD of the differences {100 * r['sd']:.2f} pp, so the "
           f"power the report's formula predicts at that size is {100 * r['predicted']:.0f}%; the median "
           f"detectable difference the reports gave (80% power) was {100 * r['detectable']:.2f} pp."]
    if "k2" in r:
        out.append(f"A later look, A/A, {r['seeds']} then {r['k2']} seeds: a difference declared by the "
                   f"fixed t at {r['k2']} seeds alone in {r['fixed_k2'].text()}; by the t at either look "
                   f"(peeking) in {r['peeking'].text()}; by the t at the first look or the anytime-valid "
                   f"test at the second (--extend) in {r['extend'].text()}; by the anytime-valid test at "
                   f"both (--sequential, then --extend) in {r['sequential'].text()}.")
    return out
