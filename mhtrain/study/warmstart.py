"""Warm start: begin a study with the best trials of another study in the same storage, e.g. the
loss-weight study from the lr study's best learning rate, so the sampler starts from what is known.

A warm-started trial takes, for each key of the new search space, the source trial's value when
it has one, else the new study's default (the value its experiment composes to); a key with
neither is left to the sampler. Which source trials were enqueued is recorded on the new study
(user attribute `warm_start`), so resuming, or asking again, never enqueues one twice and never
takes more than K from one source in all. What it takes from the source is checked first
(`untrusted.warm_values`): a source trial whose record is more than data enqueues nothing, and a
value outside the new study's local search space is not taken (that key starts as if the source
had none, with one line saying so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.study import untrusted
from mhtrain.study.params import Param
from mhtrain.study.storage import load_existing

ATTR = "warm_start"  # study user attribute: {source study name: [source trial numbers enqueued]}
DEFAULT_K = 1


def parse_warm_start(text: str) -> tuple[str, int]:
    """`STUDY[:K]` → (study name, K); K is 1 when left out."""
    name, sep, k = text.rpartition(":")
    if not sep:
        name, k = text, str(DEFAULT_K)
    if not name.strip():
        raise ConfigError(f"--warm-start {text!r}: name a study, as STUDY or STUDY:K")
    if not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--warm-start {text!r}: K={k!r} must be a whole number >= 1 (STUDY:K)")
    return name, int(k)


def load_source(storage_url: str, text: str, target: str) -> tuple[optuna.Study, int]:
    """The study `STUDY[:K]` names in the storage and K; one line if it is missing, is `target`,
    or its best K trials hold more than data."""
    name, k = parse_warm_start(text)
    if name == target:
        raise ConfigError(f"--warm-start {text}: a study cannot warm-start from itself; "
                          "name another study in the same storage")
    source = load_existing(name, storage_url)
    for t in best_trials(source, k):  # refused now, before the new study is written
        untrusted.warm_values(source, t, ())
    return source, k


def best_trials(source: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The source's K best COMPLETE trials, best first (ties: earlier trial first)."""
    if len(source.directions) != 1:
        raise ConfigError(f"study {source.study_name} has several objectives; "
                          "warm start needs a single-objective study")
    sign = -1.0 if source.direction == StudyDirection.MAXIMIZE else 1.0
    done = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (sign * t.value, t.number))[:k]


def warm_start(ostudy: optuna.Study, source: optuna.Study, k: int, space_keys: Iterable[str | Param],
               defaults: Mapping[str, Any] | None = None) -> int:
    """Enqueue the best K complete trials of `source` on `ostudy` (those not enqueued before);
    returns how many were enqueued now. Given the new study's search space (`Param`s), only values
    inside its distributions are taken."""
    if source.study_name == ostudy.study_name:
        raise ConfigError(f"study {ostudy.study_name} cannot warm-start from itself")
    done = ostudy.user_attrs.get(ATTR, {})
    if not isinstance(done, dict) or not all(isinstance(n, list) and all(isinstance(i, int) for i in n)
                                             for n in done.values()):
        untrusted.refuse(f"study {ostudy.study_name}", f"{ATTR} (not source names with trial numbers)")
    taken = done.get(source.study_name, [])
    todo = [t for t in best_trials(source, k) if t.number not in taken][: k - len(taken)]
    if not taken and not todo:
        raise ConfigError(f"study {source.study_name} has no complete trial to warm-start from")
    if not todo:
        return 0
    space = list(space_keys)
    keys = [p if isinstance(p, str) else p.key for p in space]
    taken_values = [untrusted.warm_values(source, t, space) for t in todo]  # all checked, then written
    # recorded before enqueuing: a crash in between loses a warm start, it never doubles one
    ostudy.set_user_attr(ATTR, {**done, source.study_name: [*taken, *(t.number for t in todo)]})
    defaults = {key: v for key, v in (defaults or {}).items() if v is not None}
    for t, values in zip(todo, taken_values, strict=True):
        params = {k: values.get(k, defaults.get(k)) for k in keys if k in values or k in defaults}
        ostudy.enqueue_trial(params, user_attrs={ATTR: f"{source.study_name}#{t.number}"})
    return len(todo)
