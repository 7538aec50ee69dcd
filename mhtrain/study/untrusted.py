"""What a storage holds was written by someone else (a shared database, a `.db` passed around):
every reader takes it through this one check before anything is composed or instantiated.

A stored override is re-applied only when its key is one the study searches or fixes (or the
seed and metric every trial sets) and its value is a scalar: a Hydra node (`{_target_: …}`),
a list, an `_underscore_` key or a `${…}` interpolation could make `instantiate` run code, so
each is refused in one line naming the study, trial and key. Paths stored on a study must lie
inside the project's runs folder or the storage's own artifact folder. `export`, the exported
config, `compare`, warm start and resume all read through here."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import CONF_DIR
from mhtrain.study.storage import artifact_dir

if TYPE_CHECKING:
    from mhtrain.study.space import StudyConfig

RUNS = Path("runs")  # the project's runs folder (relative paths resolve from where commands run)
PER_TRIAL = ("seed", "optimized_metric")  # set on every trial by the study itself
RESERVED = ("hydra",)  # how Hydra runs a job (its folder, its launcher) is not a stored record's
NAME = re.compile(r"[A-Za-z0-9_]+")  # a config file's name: nothing a YAML line or path could carry
HYDRA_KEY = re.compile(r"_\w*_")  # _target_, _args_, _partial_, _recursive_, _convert_ …
ARTIFACT_ID = re.compile(r"[A-Za-z0-9-]+")  # Optuna's artifact ids are uuid4 strings
SCALARS = (str, int, float, bool, type(None))
WHY = "a storage's records are data, re-applied only as the study's own keys with scalar values"


def refuse(where: str, what: str) -> NoReturn:
    raise ConfigError(f"{where}: {what} refused; {WHY}")


def scalar(where: str, key: str, value: Any) -> Any:
    """The value if it is a plain scalar with no interpolation; one line otherwise."""
    if not isinstance(value, SCALARS):
        kind = "a nested node" if isinstance(value, Mapping) else f"a {type(value).__name__}"
        refuse(where, f"{key} ({kind})")
    if isinstance(value, str) and ("${" in value or "\n" in value):
        refuse(where, f"{key} (an interpolation or a line break in {value[:40]!r})")
    if isinstance(value, float) and not math.isfinite(value):
        refuse(where, f"{key} (not a finite number: {value})")
    return value


def _parse(where: str, texts: Any) -> list[Override]:
    """Stored override strings parsed as Hydra will parse them, each key and value checked."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        refuse(where, "overrides (not a list of KEY=VALUE strings)")
    try:
        parsed = OverridesParser.create().parse_overrides(texts)
    except HydraException:
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
                refuse(where, f"{key}={str(value)[:40]!r} (not a config in conf/{key}/)")
    return parsed


def is_config(group: str, name: Any) -> bool:
    """Whether `name` is a config file of conf/<group>/: a plain name, no path, no YAML."""
    return (isinstance(name, str) and bool(NAME.fullmatch(name))
            and (CONF_DIR / group / f"{name}.yaml").is_file())


METRIC = re.compile(r"val/[A-Za-z0-9_]+")  # a val metric's name, as the contract writes them


def recorded_config(ostudy: optuna.Study) -> Mapping[str, Any]:
    """The study config a study run recorded on it (user attribute `config`); {} when there is
    none or it is not a mapping. Its values are still data: check each before use."""
    config = ostudy.user_attrs.get("config")
    return config if isinstance(config, Mapping) else {}


def searched(ostudy: optuna.Study) -> dict[str, Mapping[str, Any]]:
    """The recorded search space: each key (a string) with its spec ({} when not a mapping)."""
    space = recorded_config(ostudy).get("search_space")
    space = space if isinstance(space, Mapping) else {}
    return {k: v if isinstance(v, Mapping) else {} for k, v in space.items() if isinstance(k, str)}


def study_metric(ostudy: optuna.Study) -> str:
    """The val metric the study optimizes (its metric name, else its recorded config's), checked to
    be a metric's name: reports and re-runs read metrics by it."""
    metric = (ostudy.metric_names or [None])[0] or recorded_config(ostudy).get("metric")
    if not isinstance(metric, str) or not METRIC.fullmatch(metric):
        refuse(f"study {ostudy.study_name}", f"metric {str(metric)[:40]!r} (not a val/<name> metric)")
    return metric


def trial_record(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> tuple[str, list[str]]:
    """The stored trial's experiment and overrides, checked against the study's recorded config:
    what `export` writes and `compare` re-trains. Each override must set a key the study searches
    or fixes, with a scalar value."""
    where = f"study {ostudy.study_name}, trial {trial.number}"
    config = recorded_config(ostudy)
    if not isinstance(config.get("search_space"), Mapping):
        refuse(where, "study (no recorded study config: not made by a study run)")
    fixed = _parse(f"study {ostudy.study_name}", config.get("overrides", []))
    allowed = {*config["search_space"], *(o.key_or_group for o in fixed), *PER_TRIAL}
    name = trial.user_attrs.get("experiment")
    if not is_config("experiment", name) or name != config.get("experiment"):
        refuse(where, f"experiment {str(name)[:40]!r} (not the study's, or not in conf/experiment/)")
    overrides = trial.user_attrs.get("overrides")
    for o in _parse(where, overrides):
        if o.key_or_group not in allowed:
            refuse(where, f"{o.key_or_group} (neither searched nor fixed by the study)")
    return name, list(overrides)


def params(where: str, values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Stored parameter values for the study's own `keys` (others are not taken), each a scalar."""
    return {k: scalar(where, k, values[k]) for k in keys if k in values}


def warm_values(source: optuna.Study, trial: optuna.trial.FrozenTrial, keys: Iterable[str]) -> dict[str, Any]:
    """What warm start takes from a source trial: its values for the new study's `keys`, each a
    scalar, and only from a trial whose stored record (when it has one) passes `trial_record`."""
    if "overrides" in trial.user_attrs:
        trial_record(source, trial)
    return params(f"study {source.study_name}, trial {trial.number}", trial.params, keys)


def stored_path(ostudy: optuna.Study, attr: str, storage_url: str) -> Path | None:
    """A folder stored on the study (`artifact_dir`, `output_root`), if it lies inside the runs
    folder or the storage's artifact folder; None when the study records none."""
    value = ostudy.user_attrs.get(attr)
    if value is None:
        return None
    roots = (RUNS.resolve(), artifact_dir(storage_url))
    try:
        inside = isinstance(value, str) and any(Path(value).resolve().is_relative_to(r) for r in roots)
    except (ValueError, OSError):  # a NUL byte, a loop of links: not a folder of ours either way
        inside = False
    if not inside:
        where = f"study {ostudy.study_name}"
        refuse(where, f"{attr} {str(value)[:80]!r} (not inside {roots[0]} or {roots[1]})")
    return Path(value)


def artifact_id(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, value: Any) -> str:
    """A stored artifact id that names a file inside the artifact folder, not a path out of it."""
    if not isinstance(value, str) or not ARTIFACT_ID.fullmatch(value):
        refuse(f"study {ostudy.study_name}, trial {trial.number}", f"checkpoint id {str(value)[:40]!r}")
    return value


def check_resume(ostudy: optuna.Study, study: StudyConfig, storage_url: str) -> None:
    """What a resumed run reads back before its first trial: the study's folders, and the values
    of trials waiting to run (enqueued by warm start, a retry, or anyone with the storage)."""
    from mhtrain.study.checkpoints import ARTIFACT_DIR
    from mhtrain.study.trials import OUTPUT_ROOT

    for attr in (OUTPUT_ROOT, ARTIFACT_DIR):
        stored_path(ostudy, attr, storage_url)
    keys = {p.key for p in study.search_space}
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        fixed = t.system_attrs.get("fixed_params") or {}
        where = f"study {ostudy.study_name}, trial {t.number}"
        if not isinstance(fixed, Mapping):
            refuse(where, "enqueued values (not a mapping of keys to values)")
        if unknown := sorted(set(fixed) - keys):
            refuse(where, f"enqueued value of {str(unknown[0])[:80]!r} (not in the search space)")
        params(where, fixed, keys)
