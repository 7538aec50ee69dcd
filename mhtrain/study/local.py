"""What a command trusts about a study it reads from a storage: the local study config it runs
with (`trust`: a run, a sweep's study, an export told `--config`), else `conf/study/<name>.yaml`,
with what the user typed. Never the space, keys or bounds the storage says the study has: the
stored config only selects among the local configs this process runs (an exact copy of one) and
is compared with the one chosen, in one warning line when they differ."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import optuna

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR
from mhtrain.study import records, study_config
from mhtrain.study.params import Param, stored
from mhtrain.study.records import shown, study_where

NAME = re.compile(r"[A-Za-z0-9_]+")  # a config file's name: nothing a YAML line or path could carry


@dataclass(frozen=True)
class Local:
    """What a command trusts about a study: the local study config it runs with (its experiment,
    metric, search space, fixed overrides with what the user typed, epochs, PBT or not)."""

    source: str
    experiment: str
    metric: str
    space: tuple[Param, ...]
    fixed: tuple[str, ...]
    max_epochs: int
    pbt: bool

    @classmethod
    def of(cls, study: records.StudyConfig, source: str) -> Local:
        return cls(source, study.experiment, study.metric, study.search_space, study.overrides,
                   study.max_epochs, study.pbt is not None)

    @property
    def params(self) -> dict[str, Param]:
        return {p.key: p for p in self.space}

    def stored_space(self) -> dict[str, dict[str, Any]]:
        return {p.key: stored(p) for p in self.space}


_trusted: dict[str, Local] = {}  # study name -> the local config this process runs it with


def trust(study: records.StudyConfig, source: str | None = None) -> Local:
    """Declare `study` the local config this process runs `study.name` with (a run, a sweep's
    study, an export told `--config`): every later read of that study checks against it."""
    local = Local.of(study, source or "the study config this command runs with")
    _trusted[study.name] = local
    return local


@functools.lru_cache(maxsize=32)
def _from_file(config: str, name: str) -> Local:
    try:
        study = study_config.load(config, name=name)
    except ConfigError as e:
        raise ConfigError(f"study {name}: its local study config conf/study/{config}.yaml does not load "
                          f"here ({e}); pass the overrides it needs") from None
    return Local.of(study, f"conf/study/{config}.yaml")


def local_for(ostudy: optuna.Study) -> Local:
    """The local config that `ostudy`'s records are checked against: the one this process runs
    it with; else `conf/study/<name>.yaml` (a sweep's `<arm>@…`: the arm's); else one this process
    runs whose experiment and search space the study records exactly (a copy of that study)."""
    name = ostudy.study_name
    local = _trusted.get(name)
    config = name.split("@", 1)[0]
    if local is None and NAME.fullmatch(config) and (CONF_DIR / "study" / f"{config}.yaml").is_file():
        local = _from_file(config, name)
    recorded = records.stored_config(ostudy)
    if local is None and recorded is not None:
        local = next((lo for lo in reversed(_trusted.values()) if lo.experiment == recorded.experiment
                      and lo.stored_space() == recorded.search_space), None)
    if local is None:
        file = config if NAME.fullmatch(config) else shown(config, 40)
        raise ConfigError(f"study {name}: no local study config to check its records against (no "
                          f"conf/study/{file}.yaml); name it: `export {name} --config CONFIG`, "
                          "or re-run its study command")
    return local


def differences(ostudy: optuna.Study, local: Local) -> None:
    """One line when the stored study config is not the local one: the local one is used (said
    once a record was read against it, not before a refusal)."""
    recorded = records.stored_config(ostudy)
    if recorded is None:
        return
    parts = []
    if recorded.experiment not in (None, local.experiment):
        parts.append(f"experiment {shown(recorded.experiment, 40)} (here {local.experiment})")
    ours, theirs = local.stored_space(), recorded.search_space
    if theirs is not None and theirs != ours:
        keys = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
        parts.append("search space of " + ", ".join(shown(k, 40) for k in keys))
    if list(recorded.overrides) != list(local.fixed):
        gone = [shown(o, 60) for o in recorded.overrides if o not in local.fixed]
        parts.append(f"fixed overrides not set here: {', '.join(gone[:6]) or 'none'}"
                     + (f" (and {len(gone) - 6} more)" if len(gone) > 6 else ""))
    if recorded.metric not in (None, local.metric):
        parts.append(f"metric {shown(recorded.metric, 40)} (here {local.metric})")
    if parts:
        records.warn(f"{study_where(ostudy)}: its stored config differs from the local one "
                     f"({local.source}): {'; '.join(parts)}; the local one is used")
