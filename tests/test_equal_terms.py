"""Arms on equal terms: a study config (or a study CLI) that says it searches the same range, budget
or sampler as another study does so. The claims are read from the files themselves, so a claim
added later is checked too."""

import re

import pytest

from mhtrain.config import CONF_DIR
from mhtrain.study import study_config
from tests.conftest import ROOT

CLAIM = re.compile(r"same ((?:range|budget|sampler)(?:(?:, | and )(?:range|budget|sampler))*) as `?(\w+)`?",
                   re.IGNORECASE)


def header(path) -> str:
    """The comment lines a study config opens with, as one line."""
    lines = path.read_text().splitlines()
    return " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))


def claims() -> list[tuple[str, str, str]]:
    """(study, what it claims to share, the other study) for every conf/study/*.yaml header."""
    found = []
    for path in sorted((CONF_DIR / "study").glob("*.yaml")):
        for what, other in CLAIM.findall(header(path)):
            found += [(path.stem, w.lower(), other) for w in re.split(r", | and ", what)]
    return found


def test_the_claims_are_found():
    assert ("baseline_lr", "range", "loss_weights") in claims()
    assert ("baseline_lr", "budget", "lr") in claims()
    assert ("equal_lr", "range", "uncertainty_lr") in claims()


@pytest.mark.parametrize(("study", "what", "other"), claims())
def test_a_study_that_claims_anothers_range_budget_or_sampler_has_it(study, what, other):
    a, b = study_config.load(study), study_config.load(other)
    if what == "range":  # every key both search, searched over the same distribution
        shared = {p.key for p in a.search_space} & {p.key for p in b.search_space}
        assert shared, f"{study} and {other} search no key in common"
        ours, theirs = ({p for p in s.search_space if p.key in shared} for s in (a, b))
        assert ours == theirs
    else:
        field = {"budget": "n_trials", "sampler": "sampler"}[what]
        assert getattr(a, field) == getattr(b, field)


def test_the_baselines_cli_says_what_its_config_does():
    """studies/baselines.py claims the multihead arms' range and the lr study's budget for baseline_lr."""
    text = " ".join((ROOT / "studies" / "baselines.py").read_text().split())
    assert "same learning-rate range as the multihead arms it is the reference for" in text
    a, b, arm = study_config.load("baseline_lr"), study_config.load("lr"), study_config.load("loss_weights")
    lr = "model.optimizer.lr"
    assert [p for p in a.search_space if p.key == lr] == [p for p in arm.search_space if p.key == lr]
    assert a.n_trials == b.n_trials
