"""The ledger of analyses on a study: what each rule lets through, what it refuses in one line, and
the record another tool (the confirmation race) writes into the same ledger."""

import json
import math

import optuna
import pytest

from mhtrain import ConfigError
from mhtrain.study import analyses
from mhtrain.study.analyses import ATTR, Look, entry, ledger, plan, record, record_analysis, units_text

PAIR = [("lr", "baseline_lr")]


def seeds(first: int, n: int) -> list[tuple[int, int]]:
    return [(0, s) for s in range(first, first + n)]


@pytest.fixture
def studies() -> list[optuna.Study]:
    return [optuna.create_study(study_name=n) for n in ("lr", "baseline_lr")]


def analysed(studies: list[optuna.Study], look: Look, units: list[tuple[int, int]], p: float = 0.2,
             fidelity: tuple[str, ...] = ()) -> analyses.Analysis:
    """Record an analysis as compare does once its runs are judged."""
    done = entry(look, "compare", analyses.test_of(look), "test/digit_acc", ["lr", "baseline_lr"], units,
                 fidelity, [("lr", "baseline_lr", p, p)])
    record(studies, done)
    return done


def test_more_seeds_on_an_analysed_contrast_is_refused_unless_declared(studies):
    first = plan(studies, "q", PAIR, seeds(1000, 5), [])
    assert first.number == 1 and not first.sequential
    analysed(studies, first, seeds(1000, 5))
    with pytest.raises(ConfigError, match=r"lr vs baseline_lr was analysed on seeds 1000–1004 in family `q`: "
                                          r"seeds 1000–1009 adds seeds to it; declare a later look with "
                                          r"--extend .* \(e.g. --first-seed 1005\)"):
        plan(studies, "q", PAIR, seeds(1000, 10), [])
    with pytest.raises(ConfigError, match="adds seeds"):  # another family name does not hide it
        plan(studies, "renamed", PAIR, seeds(1000, 10), [])
    second = plan(studies, "anything", PAIR, seeds(1000, 10), [], extend=True)
    assert (second.family, second.number, second.sequential, second.fixed_before) == ("q", 2, True, True)
    assert "look 2 of family `q`, declared with --extend" in second.lines()[0]
    assert "at most 10%" in second.lines()[0]
    analysed(studies, second, seeds(1000, 10))
    looks = [(e.look, e.test.startswith(analyses.METHOD)) for e in ledger(studies[0])]
    assert looks == [(1, False), (2, True)]
    third = plan(studies, "q", PAIR, seeds(1000, 15), [], extend=True)
    assert third.number == 3


def test_the_same_analysis_again_is_a_repeat_and_overlaps_are_refused(studies):
    first = plan(studies, "q", PAIR, seeds(1000, 5), ["trainer.max_epochs=3"])
    analysed(studies, first, seeds(1000, 5), fidelity=("trainer.max_epochs=3",))
    again = plan(studies, "q", PAIR, seeds(1000, 5), ["trainer.max_epochs=3"])
    assert again.repeat is not None and again.number == 1 and "a repeat" in again.lines()[0]
    with pytest.raises(ConfigError, match="overlaps them"):  # a subset chosen after seeing the whole
        plan(studies, "q", PAIR, seeds(1000, 3), ["trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match="overlaps them"):
        plan(studies, "q", PAIR, seeds(1002, 5), ["trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match="nothing to extend"):
        plan(studies, "q", PAIR, seeds(2000, 5), ["trainer.max_epochs=3"], extend=True)
    other = plan(studies, "q", PAIR, seeds(1000, 10), ["trainer.max_epochs=10"])  # another fidelity
    assert other.number == 1 and other.family == "q, seeds 1000–1009"


def test_a_family_may_grow_on_the_same_runs(studies):
    """A sweep run again with one more value: the old contrast joins the larger family (Holm over
    more contrasts only raises its adjusted p), the new one is tested for the first time."""
    analysed(studies, plan(studies, "sizes", PAIR, seeds(1000, 2), []), seeds(1000, 2))
    more = plan(studies, "sizes", [*PAIR, ("equal_lr", "baseline_lr")], seeds(1000, 2), [])
    assert (more.family, more.number, more.grown) == ("sizes", 1, True)
    assert "analysed before on the same runs with fewer contrasts" in more.lines()[0]
    with pytest.raises(ConfigError, match="is a re-test"):  # another family on the same runs is not
        plan(studies, "other", PAIR, seeds(1000, 2), [])


def test_the_same_runs_in_another_family_must_be_labelled_a_follow_up(studies):
    analysed(studies, plan(studies, "weighting", PAIR, seeds(1000, 5), []), seeds(1000, 5))
    with pytest.raises(ConfigError, match="is a re-test; label it --follow-up weighting"):
        plan(studies, "lr only", PAIR, seeds(1000, 5), [])
    with pytest.raises(ConfigError, match=r"--follow-up nope: no earlier analysis .* \(known: weighting\)"):
        plan(studies, "lr only", PAIR, seeds(1000, 5), [], follow_up="nope")
    follow = plan(studies, "lr only", PAIR, seeds(1000, 5), [], follow_up="weighting")
    assert follow.follow_up_of == "weighting" and "a follow-up of family `weighting`" in follow.lines()[0]


def test_fresh_seeds_are_a_new_family_and_the_report_lists_what_came_before(studies):
    analysed(studies, plan(studies, "q", PAIR, seeds(1000, 5), []), seeds(1000, 5), p=0.053)
    fresh = plan(studies, "q", PAIR, seeds(1005, 10), [])
    assert fresh.number == 1 and fresh.family == "q, seeds 1005–1014"
    this, intro, *listed = fresh.lines()
    assert "a new family on fresh seeds, not pooled with them" in this and "`q`" in this
    assert len(listed) == 1 and "family `q`, look 1: seeds 1000–1004" in listed[0]
    assert "lr − baseline_lr: p 0.053" in listed[0]
    analysed(studies, fresh, seeds(1005, 10))
    assert plan(studies, "q", PAIR, seeds(1005, 10), []).repeat is not None  # the renamed family repeats


def test_a_declared_sequential_first_look_keeps_every_look_at_5_percent(studies):
    first = plan(studies, "q", PAIR, seeds(1000, 5), [], sequential=True)
    assert first.sequential and first.number == 1
    analysed(studies, first, seeds(1000, 5))
    second = plan(studies, "q", PAIR, seeds(1000, 10), [], extend=True)
    assert not second.fixed_before and "stays at 5%" in second.lines()[0]


def test_another_tool_records_its_analysis_in_the_same_ledger(studies):
    stored = record_analysis(studies[0], tool="confirm", family="lr confirmation",
                             arms=["trial 3", "trial 7"], seeds=[50, 51, 52], test="paired t-test, Holm",
                             contrasts=[("trial 3", "trial 7", math.nan, math.nan)], metric="val/digit_acc")
    got = ledger(studies[0])
    assert got == [stored] and got[0].units == ((0, 50), (0, 51), (0, 52)) and got[0].contrasts[0].p is None
    assert "confirm, family `lr confirmation`, look 1: seeds 50–52" in got[0].line()
    assert json.loads(json.dumps(studies[0].user_attrs[ATTR]))  # plain JSON in the storage
    assert plan(studies, "q", PAIR, seeds(50, 3), []).earlier == [stored]  # listed, not a conflict


@pytest.mark.parametrize("bad", ["not a list", [{"id": "x"}], [{"look": math.nan}], [["a"]]])
def test_a_malformed_ledger_is_refused_in_one_line(studies, bad):
    studies[0].set_user_attr(ATTR, bad)
    with pytest.raises(ConfigError) as e:
        ledger(studies[0])
    assert "study lr:" in str(e.value) and "\n" not in str(e.value)


def test_units_read_as_seeds_or_searches():
    assert units_text(seeds(1000, 5)) == "seeds 1000–1004" and units_text([(0, 7)]) == "seed 7"
    assert units_text([(j, 1000 + 3 * j + k) for j in range(2) for k in range(3)]) == (
        "study seeds 0–1 × seeds 1000–1005")
