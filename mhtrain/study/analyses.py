"""The ledger of analyses on a study: every test of a question on a study's runs (a `compare`, a
confirmation race) is recorded on the study (user attribute `analyses`: seeds, arms, test, family
and p), so that a later analysis cannot quietly look again.

- The same analysis again (same family, contrasts, seeds and fidelity) is a repeat: shown, not
  recorded twice.
- More seeds on a contrast already analysed at the same fidelity is a later look: refused unless
  declared (`--extend`), and then judged by the anytime-valid test of `sequential`, never as a
  first look.
- The same runs tested again in another family are refused unless labelled a follow-up of it.
- Seeds that overlap an earlier analysis's in any other way are refused; fresh seeds (disjoint)
  make a new family, and the report says so.

The ledger is data written by whoever ran those analyses: it is read once, through `Analysis`
(strict, bounded), and a malformed one is refused in one line."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mhtrain import ConfigError
from mhtrain.study.anytime import LEVEL, METHOD, anytime
from mhtrain.study.confirm import read_design
from mhtrain.study.race import Verdict

ATTR = "analyses"  # study user attribute: a list of Analysis records, oldest first
Unit = tuple[int, int]  # (study seed, training seed): one run of each arm
TEXT = 500  # the longest string a record holds


class Tested(BaseModel):
    """One contrast of an analysis: `arm` minus `reference`, its p-value and its adjusted p
    (None where the test was undefined)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    arm: str = Field(max_length=TEXT)
    reference: str = Field(max_length=TEXT)
    p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    p_adjusted: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)


class Analysis(BaseModel):
    """One analysis as the ledger holds it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=64)
    when: str = Field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"), max_length=64)
    tool: str = Field(max_length=40)  # compare, confirm
    family: str = Field(min_length=1, max_length=TEXT)
    follow_up_of: str | None = Field(default=None, max_length=TEXT)
    look: int = Field(default=1, ge=1, le=1000)
    test: str = Field(max_length=TEXT)
    metric: str = Field(default="", max_length=TEXT)
    fidelity: tuple[str, ...] = Field(default=(), max_length=100)
    units: tuple[Unit, ...] = Field(min_length=1, max_length=100_000)
    arms: tuple[str, ...] = Field(min_length=1, max_length=1000)
    contrasts: tuple[Tested, ...] = Field(max_length=10_000)

    @property
    def pairs(self) -> frozenset[frozenset[str]]:
        return frozenset(frozenset((c.arm, c.reference)) for c in self.contrasts)

    def line(self) -> str:
        """The analysis in one line, for a report's list of earlier analyses."""
        tests = "; ".join(f"{c.arm} − {c.reference}: p {_p(c.p)}, adjusted {_p(c.p_adjusted)}"
                          for c in self.contrasts)
        label = f"family `{self.family}`" + (
            f", a follow-up of `{self.follow_up_of}`" if self.follow_up_of else "")
        fidelity = " ".join(f"`{o}`" for o in self.fidelity) or "the studies' own fidelity"
        return (f"{self.when} {self.tool}, {label}, look {self.look}: {units_text(self.units)}, {fidelity}, "
                f"{self.test}; {tests}")


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def units_text(units: Iterable[Unit]) -> str:
    """`seeds 1000–1004` or, with repeated searches, `study seeds 0–2 x seeds 1000–1014`."""
    units = list(units)
    studies, seeds = sorted({s for s, _ in units}), sorted({t for _, t in units})

    def span(xs: list[int]) -> str:
        return f"{xs[0]}" if len(xs) == 1 else (f"{xs[0]}–{xs[-1]}" if xs == list(range(xs[0], xs[-1] + 1))
                                               else ", ".join(map(str, xs)))
    text = f"{'seed' if len(seeds) == 1 else 'seeds'} {span(seeds)}"
    return text if studies == [0] else f"study seeds {span(studies)} × {text}"


def ledger(study: optuna.Study) -> list[Analysis]:
    """The study's recorded analyses, oldest first, each read through the schema; one line naming
    the study and the entry when one is not a ledger record."""
    raw = study.user_attrs.get(ATTR, [])
    if not isinstance(raw, list):
        raise ConfigError(f"study {study.study_name}: its `{ATTR}` attribute is not a list of analyses; "
                          "remove it to start the ledger again")
    out = []
    for i, entry in enumerate(raw):
        try:
            out.append(Analysis.model_validate_json(json.dumps(entry)))
        except (ValidationError, ValueError) as e:
            first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
            where = ".".join(map(str, first["loc"])) or "record"
            raise ConfigError(f"study {study.study_name}: `{ATTR}` entry {i} is not a ledger record "
                              f"({where}: {first['msg']}); remove it or the attribute") from None
    return out


def record(studies: Iterable[optuna.Study], analysis: Analysis) -> None:
    """Append the analysis to the ledger of each study (re-read just before writing)."""
    entry = json.loads(analysis.model_dump_json())
    for study in studies:
        stored = study.user_attrs.get(ATTR, [])
        if not any(isinstance(e, dict) and e.get("id") == analysis.id for e in stored):
            study.set_user_attr(ATTR, [*stored, entry])


def record_analysis(study: optuna.Study, *, tool: str, family: str, arms: Sequence[str],
                    seeds: Sequence[int], test: str,
                    contrasts: Sequence[tuple[str, str, float, float]], metric: str = "",
                    fidelity: Sequence[str] = (), look: int = 1,
                    follow_up_of: str | None = None) -> Analysis:
    """Record one analysis that another tool ran (the confirmation race: its finalists as `arms`,
    its fresh seeds, `contrasts` as (arm, reference, p, adjusted p), NaN for an undefined test)
    in the study's ledger, where `compare` and the reports read it; returns what was stored."""
    planned = Look(family, look, follow_up_of, [], [])
    analysis = entry(planned, tool, test, metric, arms, [(0, int(s)) for s in seeds], fidelity, contrasts)
    record([study], analysis)
    return analysis


def record_race(study: optuna.Study, verdict: Verdict, metric: str) -> Analysis | None:
    """The confirmation race as a look of its own family (`<study> race`): each finalist against the
    chosen arm, p anytime-valid over their shared seeds, adjusted as the race drops (x (n - 1)).
    A race re-run on the same seeds is the same look: nothing is recorded again."""
    first = read_design(study).first_seed
    family, seeds = f"{study.study_name} race", list(range(first, first + verdict.rounds))
    earlier = [a for a in ledger(study) if a.family == family]
    if verdict.chosen is None or (earlier and len(earlier[-1].units) == len(seeds)):
        return None
    best = verdict.values[verdict.chosen]
    contrasts = []
    for arm, xs in verdict.values.items():
        if arm != verdict.chosen:
            p = anytime([y - x for x, y in zip(xs, best, strict=False)], 1 - LEVEL)[2]
            contrasts.append((arm, verdict.chosen, p, min(1.0, p * (len(verdict.arms) - 1))))
    return record_analysis(study, tool="confirm", family=family, arms=verdict.arms, seeds=seeds,
                           test=f"{METHOD}, x (n - 1) over each arm's pairs", contrasts=contrasts,
                           metric=metric, look=len(earlier) + 1)


@dataclass(frozen=True)
class Look:
    """Where a planned analysis stands in its question's ledger: its family, which look it is,
    the earlier analyses of these studies, and the recorded analysis it repeats (if any)."""

    family: str
    number: int
    follow_up_of: str | None
    earlier: list[Analysis]
    related: list[Analysis]  # the earlier analyses that tested one of these contrasts at this fidelity
    repeat: Analysis | None = None
    declared: bool = False  # judged sequentially from its first look (--sequential)
    fixed_before: bool = False  # an earlier look of the family was judged by the fixed-sample t
    grown: bool = False  # the family was analysed before on the same runs with fewer contrasts

    @property
    def sequential(self) -> bool:
        """A later look, or a first one declared sequential: judged by the anytime-valid test."""
        return self.number > 1 or self.declared

    def lines(self) -> list[str]:
        """What the report says about this analysis's place in the ledger, then every earlier
        analysis of these studies, one line each."""
        if self.repeat is not None:
            what = (f"a repeat of the analysis recorded {self.repeat.when} (family `{self.family}`, look "
                    f"{self.number}): the same runs and test, shown again and not recorded again")
        elif self.number > 1:
            what = (f"look {self.number} of family `{self.family}`, declared with --extend: its seeds extend "
                    f"the earlier looks', so it is judged by the {METHOD}; the fixed-sample paired t is "
                    "shown beside it, not used. "
                    + ("An earlier look was judged by the fixed-sample t-test at 5% and keeps that error: "
                       "over all looks together the chance of a false difference is at most 10%, not 5% "
                       "(--sequential at a first look keeps it at 5%)" if self.fixed_before else
                       "Every look was judged this way: the chance of a false difference over all of "
                       "them together stays at 5%"))
        elif self.declared:
            what = (f"family `{self.family}`, a first look declared sequential (--sequential): judged by "
                    f"the {METHOD}, so later looks (--extend) keep the error over all looks at 5%")
        else:
            what = f"family `{self.family}`, a first look: the paired t-test decides"
        if self.grown:
            what += ("; the family was analysed before on the same runs with fewer contrasts (a sweep "
                     "with more values, say): all of them are adjusted together now")
        if self.follow_up_of:
            what += (f"; a follow-up of family `{self.follow_up_of}`, designed after it: its p-values are "
                     "adjusted within this family only, so read it as a new question, not a confirmation")
        fresh = sorted({e.family for e in self.related if e.family != self.family})
        if fresh and self.follow_up_of is None:
            what += ("; these contrasts were analysed before on other seeds, in "
                     + ", ".join(f"`{f}`" for f in fresh)
                     + ": this is a new family on fresh seeds, not pooled with them")
        listed = [e.line() for e in self.earlier] or ["none: the first analysis recorded on these studies"]
        return [f"This analysis: {what}.", "Analyses recorded on these studies before it:", *listed]


def _fresh(earlier: Iterable[Analysis]) -> str:
    """Where fresh seeds would start: after every seed these analyses used."""
    last = max((t for e in earlier for _, t in e.units), default=None)
    return "" if last is None else f" (e.g. --first-seed {last + 1})"


def plan(studies: Sequence[optuna.Study], family: str, pairs: Iterable[tuple[str, str]],
         units: Sequence[Unit], fidelity: Sequence[str], extend: bool = False,
         follow_up: str | None = None, sequential: bool = False) -> Look:
    """Check a planned analysis against the ledgers of its studies before anything is trained:
    the look it is, or one line saying why it is refused and what to do instead. A family name
    already used on other seeds gets the seeds appended: fresh seeds are a family of their own."""
    by_id = {e.id: e for s in studies for e in ledger(s)}
    earlier = sorted(by_id.values(), key=lambda e: e.when)
    ordered = list(pairs)
    ours = frozenset(frozenset(p) for p in ordered)
    new, fidelity = set(units), tuple(fidelity)
    related = [e for e in earlier if e.pairs & ours and e.fidelity == fidelity]
    if follow_up is not None and follow_up not in {e.family for e in earlier}:
        raise ConfigError(f"--follow-up {follow_up}: no earlier analysis of these studies is in a family of "
                          f"that name (known: {', '.join(sorted({e.family for e in earlier})) or 'none'})")
    names = (family, f"{family}, {units_text(units)}")
    repeat = next((e for e in reversed(related) if e.family in names and e.pairs == ours
                   and set(e.units) == new), None)
    if repeat is not None:
        return Look(repeat.family, repeat.look, repeat.follow_up_of, earlier, related, repeat,
                    repeat.look == 1 and repeat.test.startswith(METHOD))
    looks, name, grown = [], _pair_text(ordered, ours), False
    for e in related:
        old = set(e.units)
        what = f"{_pair_text(ordered, e.pairs)} was analysed on {units_text(e.units)} in family `{e.family}`"
        if not old & new:
            continue  # fresh seeds: a new family
        if old == new:
            if e.family == family and e.pairs <= ours:
                grown = True  # the same family, more contrasts on the same runs: Holm over all of them
                continue
            if follow_up != e.family:
                raise ConfigError(f"{what}: testing the same runs in family `{family}` is a re-test; "
                                  f"label it --follow-up {e.family}, or use fresh "
                                  f"seeds{_fresh(related)}")
            continue
        if old < new and list(units[:len(e.units)]) == list(e.units) and e.pairs == ours:
            if not extend:
                raise ConfigError(f"{what}: {units_text(units)} adds seeds to it; declare a later "
                                  "look with --extend (judged sequentially), or use fresh "
                                  f"seeds{_fresh(related)}")
            looks.append(e)
            continue
        raise ConfigError(f"{what}: {units_text(units)} overlaps them; use the same seeds, extend them "
                          f"in order with --extend, or use fresh seeds{_fresh(related)}")
    if extend and not looks:
        raise ConfigError(f"--extend: no earlier analysis of {name} at this fidelity is a first part of "
                          f"{units_text(units)}; nothing to extend (leave --extend out)")
    if looks:
        last = max(looks, key=lambda e: e.look)
        fixed = any(not e.test.startswith(METHOD) for e in looks)
        return Look(last.family, last.look + 1, last.follow_up_of, earlier, related, fixed_before=fixed)
    if any(e.family == family and not (set(e.units) == new and e.pairs <= ours) for e in earlier):
        family = names[1]  # the name is in use for other runs: fresh seeds are a family of their own
    return Look(family, 1, follow_up, earlier, related, declared=sequential, grown=grown)


def _pair_text(ordered: Sequence[tuple[str, str]], among: frozenset[frozenset[str]]) -> str:
    """The planned contrasts that are also `among`, as `arm vs reference`."""
    return ", ".join(f"{a} vs {b}" for a, b in ordered if frozenset((a, b)) in among)


def test_of(look: Look) -> str:
    """The name of the test that decides at this look, as the ledger records it."""
    return f"{METHOD}, Holm" if look.sequential else "paired t-test, Holm"


def entry(look: Look, tool: str, test: str, metric: str, arms: Sequence[str], units: Sequence[Unit],
          fidelity: Sequence[str], contrasts: Iterable[tuple[str, str, float, float]]) -> Analysis:
    """The ledger record of an analysis planned as `look`, its contrasts as (arm study, reference
    study, p, adjusted p) with NaN for an undefined test."""
    def p(x: float) -> float | None:
        return None if math.isnan(x) else min(1.0, max(0.0, float(x)))

    return Analysis(tool=tool, family=look.family, follow_up_of=look.follow_up_of, look=look.number,
                    test=test, metric=metric, fidelity=tuple(fidelity), units=tuple(units), arms=tuple(arms),
                    contrasts=tuple(Tested(arm=a, reference=r, p=p(x), p_adjusted=p(y))
                                    for a, r, x, y in contrasts))
