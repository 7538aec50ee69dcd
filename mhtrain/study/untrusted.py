"""What a storage holds was written by someone else (a shared database, a `.db` passed around), so
the allow-list comes from this side: the local study config the command runs with (`Local`: the
one it was started with, else `conf/study/<name>.yaml`) and what the user typed. A stored trial
may set only the keys that config searches, each to a value inside its local distribution (type,
bounds, steps, choices), plus the seed; everything else a re-run or an export trains is the local
config's own. Where the stored config differs from the local one, one line says so and the local
one is used. Stored override texts are parsed first, as Hydra would: a Hydra node (`{_target_:
…}`), a list, an `_underscore_` key or a `${…}` interpolation could make `instantiate` run code,
and each is refused in one line naming the study, trial and key. `export`, the exported config,
`compare`, `--confirm`, warm start and resume all read through here."""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR
from mhtrain.study import folders, records
from mhtrain.study.local import NAME, Local, differences, local_for, trust
from mhtrain.study.params import Param
from mhtrain.study.records import StudyConfig, shown, study_where, trial_where

PER_TRIAL = ("seed", "optimized_metric")  # set on every trial by the study itself
RESERVED = ("hydra",)  # how Hydra runs a job (its folder, its launcher) is not a stored record's
HYDRA_KEY = re.compile(r"_\w*_")  # _target_, _args_, _partial_, _recursive_, _convert_ …
SCALARS = (str, int, float, bool, type(None))
WHY = "a storage's records are data, re-applied only as the local study's keys with values in its space"


def refuse(where: str, what: str) -> NoReturn:
    raise ConfigError(f"{where}: {what} refused; {WHY}")


def scalar(where: str, key: str, value: Any) -> Any:
    """The value if it is a plain scalar with no interpolation; one line otherwise."""
    if not isinstance(value, SCALARS):
        kind = "a nested node" if isinstance(value, Mapping) else f"a {type(value).__name__}"
        refuse(where, f"{key} ({kind})")
    if isinstance(value, str) and ("${" in value or "\n" in value):
        refuse(where, f"{key} (an interpolation or a line break in {shown(value, 40)})")
    if isinstance(value, float) and not math.isfinite(value):
        refuse(where, f"{key} (not a finite number: {value})")
    return value


def _parse(where: str, texts: Any) -> list[Override]:
    """Stored override strings parsed as Hydra will parse them, each key and value checked."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        refuse(where, "overrides (not a list of KEY=VALUE strings)")
    try:
        parsed = OverridesParser.create().parse_overrides(texts)
    except (HydraException, RecursionError, ValueError):
        refuse(where, "overrides (not Hydra overrides)")
    for o in parsed:
        key = o.key_or_group
        parts = re.split(r"[./]", key)
        if o.package is not None or o.is_sweep_override() or any(HYDRA_KEY.fullmatch(p) for p in parts):
            refuse(where, f"{key} (a package, sweep or instantiate key)")
        if parts[0] in RESERVED:
            refuse(where, f"{key} (it decides how Hydra runs the job)")
        if o.type != OverrideType.DEL:
            value = scalar(where, key, o.value())
            if (CONF_DIR / key).is_dir() and not is_config(key, value):
                refuse(where, f"{key}={shown(value, 40)} (not a config in conf/{key}/)")
    return parsed


def _keys(texts: Iterable[str]) -> list[str]:
    """The keys trusted overrides (the local config's, the user's) set."""
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(texts))]


def is_config(group: str, name: Any) -> bool:
    """Whether `name` is a config file of conf/<group>/: a plain name, no path, no YAML."""
    return (isinstance(name, str) and bool(NAME.fullmatch(name))
            and (CONF_DIR / group / f"{name}.yaml").is_file())


def searched(ostudy: optuna.Study) -> dict[str, Mapping[str, Any]]:
    """The search space a study's records are read against: the local one, each key with its
    distribution as a study stores it."""
    return local_for(ostudy).stored_space()


def study_metric(ostudy: optuna.Study) -> str:
    """The val metric the study optimizes: the local config's (reports and re-runs read it)."""
    return local_for(ostudy).metric


def stored_overrides(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[Override]:
    """The trial's stored overrides, parsed and checked as data (scalars, no node, no Hydra key),
    and its experiment, the study's own: a record that is more than data is refused first."""
    where = trial_where(ostudy, trial)
    config = records.stored_config(ostudy)
    if config is None or config.search_space is None:
        refuse(where, "study (no recorded study config: not made by a study run)")
    name = records.trial_attr(ostudy, trial, "experiment")
    if not is_config("experiment", name) or name != config.experiment:
        refuse(where, f"experiment {shown(name, 40)} (not the study's, or not in conf/experiment/)")
    return _parse(where, records.trial_attr(ostudy, trial, "overrides"))


def _allowed(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, parsed: list[Override],
             local: Local | None = None) -> None:
    """Each override sets a key the study (or the local config) searches or fixes, or the seed."""
    config = records.stored_config(ostudy)
    fixed = _parse(study_where(ostudy), list(config.overrides))
    ours = [] if local is None else [*local.params, *_keys(local.fixed)]
    allowed = {*config.search_space, *(o.key_or_group for o in fixed), *ours, *PER_TRIAL}
    for o in parsed:
        if o.key_or_group not in allowed:
            refuse(trial_where(ostudy, trial), f"{o.key_or_group} (neither searched nor fixed by the study)")


def trial_record(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> tuple[str, list[str]]:
    """What re-trains `trial` (`export` writes it, `compare` and `--confirm` re-train it): the local
    experiment and fixed overrides, the trial's values of the local search space (each inside
    its local distribution) and its seed."""
    where = trial_where(ostudy, trial)
    parsed = stored_overrides(ostudy, trial)
    local = local_for(ostudy)
    _allowed(ostudy, trial, parsed, local)
    check_records(ostudy)
    params, values, seed = local.params, [], []
    for o in parsed:
        key = o.key_or_group
        if key in params:
            if o.type == OverrideType.DEL or (why := records.within(params[key], o.value())):
                refuse(where, f"{key}={shown(o.value(), 40)} ({why or 'deleted'}: the local search space "
                              f"of {local.source})")
            values.append(o.input_line)
        elif key == "seed":
            seed = [f"seed={seed_value(where, o.value())}"]
    differences(ostudy, local)
    return local.experiment, [*local.fixed, *values, *seed, f"optimized_metric={local.metric}"]


def seed_value(where: str, value: Any) -> int:
    """A seed numpy and torch accept (0 to 2**32 - 1)."""
    if value is None:
        refuse(where, "seed=null")
    return records.read(where, "seed", value, records.SEED)


_checked: weakref.WeakSet[optuna.Study] = weakref.WeakSet()


def check_records(ostudy: optuna.Study) -> None:
    """Every record that readers of a whole study take as they find it (the comparison report and
    its re-runs), checked once per opened study, before anything trains: the first wrong one is
    one line."""
    if ostudy in _checked:
        return
    for t in ostudy.get_trials(deepcopy=False):
        for attr in ("experiment", "overrides", "seconds", "population"):  # what the report reads
            records.trial_attr(ostudy, t, attr)
    stored_reruns(ostudy)
    _checked.add(ostudy)


def stored_reruns(ostudy: optuna.Study) -> dict[str, dict[str, Any]]:
    """The study's stored `compare` re-runs (key -> record), each checked to hold the test metric
    of the local config and measurements only (numbers, lists of them, encoded outcomes)."""
    metric = "test/" + local_for(ostudy).metric.removeprefix("val/")
    out = {}
    for key, rerun in (records.study_attr(ostudy, "reruns") or {}).items():
        values = rerun.model_dump()
        bad = next((k for k, v in values.items() if v is not None and not _measured(v)), None)
        if metric not in values or bad is not None:
            refuse(f"{study_where(ostudy)}, re-run {shown(key, 60)}",
                   f"reruns record ({'no ' + metric if bad is None else shown(bad, 40) + ' not a number'})")
        out[key] = {k: v for k, v in values.items() if v is not None}
    return out


def _measured(value: Any) -> bool:
    """A re-run's measurement: a finite number, a list of them, or an encoded text."""
    if isinstance(value, list):
        return len(value) <= 10**6 and all(not isinstance(v, list) and _measured(v) for v in value)
    if isinstance(value, str):
        return len(value) <= 10**7
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def values_within(where: str, values: Mapping[str, Any], local: Local, keys: Iterable[str]) -> dict[str, Any]:
    """Stored values for the local `keys` (others are not taken), each inside its distribution."""
    params, out = local.params, {}
    for k in keys:
        if k in values:
            if k not in params or (why := records.within(params[k], scalar(where, k, values[k]))):
                refuse(where, f"{k}={shown(values[k], 40)} ({why if k in params else 'not searched'}: "
                              f"the local search space of {local.source})")
            out[k] = values[k]
    return out


def warm_values(source: optuna.Study, trial: optuna.trial.FrozenTrial,
                space: Iterable[str | Param]) -> dict[str, Any]:
    """What warm start takes from a source trial: its values for the new study's keys, each a
    plain scalar, from a trial whose stored record (when it has one) is data. Given the new
    study's distributions (`Param`s, its local search space), a value outside one is not taken:
    that key starts from the new study's default, and one line says so."""
    where = trial_where(source, trial)
    if "overrides" in trial.user_attrs:
        _allowed(source, trial, stored_overrides(source, trial))
    taken = {}
    for p in space:
        key = p if isinstance(p, str) else p.key
        if key not in trial.params:
            continue
        value = scalar(where, key, trial.params[key])
        if isinstance(p, Param) and (why := records.within(p, value)):
            records.warn(f"{where}: {key}={shown(value, 40)} not taken by warm start ({why}: the new "
                         "study's search space)")
            continue
        taken[key] = value
    return taken


def check_resume(ostudy: optuna.Study, study: StudyConfig, storage_url: str) -> None:
    """What a resumed run reads back before its first trial: the study's folders (read once,
    here), every trial's record that later steps read, and the values of trials waiting to run
    (enqueued by warm start, a retry, or anyone with the storage)."""
    local = trust(study)
    folders.check(ostudy, storage_url)
    for t in ostudy.get_trials(deepcopy=False):
        records.trial_attr(ostudy, t, "overrides")  # the race reads every trial's seeds from them
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        fixed = t.system_attrs.get("fixed_params") or {}
        where = trial_where(ostudy, t)
        if not isinstance(fixed, Mapping):
            refuse(where, "enqueued values (not a mapping of keys to values)")
        if unknown := sorted(str(k) for k in set(fixed) - set(local.params)):
            refuse(where, f"enqueued value of {shown(unknown[0], 80)} (not in the search space)")
        values_within(where, fixed, local, fixed)
