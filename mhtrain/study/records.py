"""Everything the project stores on a study or a trial, as one typed schema, and the one way to read
it back. A storage is written by someone else: each attribute is read through its model, and a
wrong type, size or value is one line naming the study, trial and attribute. A reader says
whether the command can go on without it (`fatal=False`: a warning, and the attribute is taken as
absent) or not (a `ConfigError`, exit 2). Nothing here knows MNIST, Lightning or the search: it is
the leaf every reader of a storage imports."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from mhtrain import ConfigError
from mhtrain.pbt import PbtSpec
from mhtrain.study.params import Param, stored
from mhtrain.study.pruners import PrunerSpec

OUTPUT_ROOT = "output_root"  # study user attribute: the folder that holds this study's trials
ARTIFACT_DIR = "artifact_dir"  # study user attribute: where its checkpoints are stored
OVER_BUDGET = "over_budget"  # trial user attribute: asked in a race for the last slot, not run
FAIL_REASON = "fail_reason"  # trial user attribute: why it failed, in one line
LINE = r"^[^\x00-\x1f\x7f]*$"  # one line of text: no line break, no control character
Text = Annotated[str, StringConstraints(strict=True, max_length=4000, pattern=LINE)]
Short = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200, pattern=LINE)]
Count = Annotated[int, Field(strict=True, ge=0, le=10**9)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]  # what numpy and torch seed with
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1e9)]
ArtifactId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9-]{1,100}$")]
STRICT = ConfigDict(strict=True, extra="ignore", frozen=True)


@dataclass(frozen=True)
class StudyConfig:
    """What a study searches, over which experiment, with which sampler and pruner; and how this
    run trains it (population size and why, checkpoint policy), settled when it was loaded."""

    name: str
    experiment: str
    metric: str
    direction: str
    n_trials: int
    seed: int
    sampler: str
    pruner: PrunerSpec
    search_space: tuple[Param, ...]
    overrides: tuple[str, ...]
    max_epochs: int  # the experiment's, with the study's overrides: a pruner's max resource
    population: int = 1
    population_reason: str = "1 as asked"
    keep_checkpoints: str = "none"
    pbt: PbtSpec | None = None  # population-based training (mhtrain/pbt.py)

    def to_dict(self) -> dict[str, Any]:
        """What the study is, as stored on it (JSON values), so a resumed run can be compared
        with it; how a run trains it (population, checkpoints) is not part of it."""
        return json.loads(json.dumps({
            "name": self.name, "experiment": self.experiment, "metric": self.metric,
            "direction": self.direction, "n_trials": self.n_trials, "seed": self.seed,
            "sampler": self.sampler, "pruner": self.pruner.to_dict(), "overrides": list(self.overrides),
            "search_space": {p.key: stored(p) for p in self.search_space},
            "pbt": self.pbt.to_dict() if self.pbt else None}))


class Owner(BaseModel):
    """Who runs a trial (`ledger.owner`, `slurm.placement`)."""

    model_config = STRICT
    host: Short
    pid: Annotated[int, Field(strict=True, ge=1, le=2**31)]
    started: Annotated[str, StringConstraints(strict=True, pattern=r"^\d{1,20}$")] | None = None
    gpu: Text | None = None
    slurm: Short | None = None
    requeued: Count | None = None


class Segment(BaseModel):
    """One stretch of a PBT member's `pbt_schedule`; its searched values are the other keys, each
    checked against the local search space by the replay."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    epoch: Count
    parent: Count | None = None
    parent_epoch: Count | None = None


class Population(BaseModel):
    """A population member's `population` record (`FitResult.population`)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    members: Annotated[int, Field(strict=True, ge=1, le=10**6)] | None = None
    joined_epoch: Count | None = None
    cohort: list[Count] | None = None


class TrialRecord(BaseModel):
    """A trial's user attributes as the lifecycle, the engines, the reaper and warm start write
    them; `best_<metric>` (a finite number) is checked by `trial_attr` by its prefix."""

    model_config = STRICT
    experiment: Short | None = None
    overrides: Annotated[list[Text], Field(max_length=10_000)] | None = None
    seed: Seed | None = None
    output_dir: Text | None = None
    max_epochs: Annotated[int, Field(strict=True, ge=1, le=10**6)] | None = None
    tracking: dict[Literal["mlflow", "tensorboard"], Text] | None = None
    owner: Owner | None = None
    over_budget: bool | None = None
    fail_reason: Text | None = None
    epochs: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=10**6)] | None = None
    seconds: Amount | None = None
    params: Count | None = None
    stopped: Short | None = None
    population: Population | None = None
    checkpoint: ArtifactId | None = None
    retry_of: Count | None = None
    retries: Annotated[int, Field(strict=True, ge=0, le=1000)] | None = None
    warm_start: Short | None = None
    pbt_schedule: Annotated[list[Segment], Field(min_length=1, max_length=10_000)] | None = None


class StoredConfig(BaseModel):
    """A study's recorded config (`StudyConfig.to_dict`): data to compare with the local config,
    never a source of keys or bounds."""

    model_config = STRICT
    name: Short | None = None
    experiment: Short | None = None
    metric: Short | None = None
    direction: Literal["maximize", "minimize"] | None = None
    n_trials: Count | None = None
    seed: Annotated[int, Field(strict=True, ge=-(2**63), le=2**63)] | None = None
    sampler: Short | None = None
    pruner: dict[Short, Any] | None = None
    overrides: Annotated[list[Text], Field(max_length=10_000)] = []
    search_space: dict[Short, dict[Short, Any]] | None = None
    pbt: dict[Short, Any] | bool | None = None


class Rerun(BaseModel):
    """One stored re-run of `compare` (`evaluate.reruns.record_of`): its metrics are the other keys."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    seconds: Amount | None = None
    epochs: Count | None = None


class StudyRecord(BaseModel):
    """A study's user attributes as a study run, checkpoints, warm start and compare write them
    (`confirmation` and the race's records are read by `confirm`'s own models)."""

    model_config = STRICT
    config: StoredConfig | None = None
    output_root: Text | None = None
    artifact_dir: Text | None = None
    versions: dict[Short, Short] | None = None
    earlier_configs: list[dict[Short, Any]] | None = None
    warm_start: dict[Short, list[Count]] | None = None
    reruns: dict[Text, Rerun] | None = None


WHY = "a storage's records are data, read only as the project writes them"
_adapters: dict[tuple[type, str], TypeAdapter] = {}
_warned: set[str] = set()
BEST = TypeAdapter(Number)
SEED = TypeAdapter(Seed)


def _adapter(model: type[BaseModel], attr: str) -> TypeAdapter | None:
    if attr.startswith("best_") and model is TrialRecord:
        return BEST
    field = model.model_fields.get(attr)
    if field is None:
        return None
    if (model, attr) not in _adapters:
        kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        _adapters[(model, attr)] = TypeAdapter(kind)
    return _adapters[(model, attr)]


def shown(value: Any, limit: int = 60) -> str:
    """A stored value as one short line, whatever it holds (a 5,000-digit integer, a newline)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, Mapping):
        return f"<a mapping of {len(value)} key(s)>"
    if isinstance(value, list | tuple):
        return f"<a list of {len(value)} item(s)>"
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem(error: ValidationError) -> tuple[str, Any, str]:
    """(where in the value, the bad part, what is wrong) of a validation error's first finding."""
    first = error.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"])
    pattern = (first.get("ctx") or {}).get("pattern")
    why = ("not one line of printable text" if pattern == LINE else f"not of the form {pattern}" if pattern
           else " ".join(str(first["msg"]).split())[:120])
    return loc, first.get("input"), why


def read(where: str, attr: str, value: Any, adapter: TypeAdapter | None, fatal: bool = True) -> Any:
    """`value` validated as `attr`; an unknown attribute passes as it is (the project stores none)."""
    if value is None or adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except (ValidationError, ValueError, RecursionError) as e:
        loc, bad, why = problem(e) if isinstance(e, ValidationError) else ("", value, type(e).__name__)
        name = f"{attr}.{loc}" if loc else attr
        if fatal:
            raise ConfigError(f"{where}: stored {name} = {shown(bad)} refused ({why}); {WHY}") from None
        warn(f"{where}: stored {name} = {shown(bad)} ignored ({why})")
        return None


def warn(line: str) -> None:
    """One warning line per finding per process (a resume reads the same record many times)."""
    if line not in _warned:
        _warned.add(line)
        print(f"warning: {line}", file=sys.stderr, flush=True)


def study_where(ostudy: optuna.Study) -> str:
    """How a one-line message names the study (its name is checked where it enters)."""
    return f"study {ostudy.study_name}"


def trial_where(ostudy: optuna.Study | str, trial: optuna.trial.FrozenTrial) -> str:
    """How a one-line message names the trial and its study (or study name)."""
    name = ostudy if isinstance(ostudy, str) else ostudy.study_name
    return f"study {name}, trial {trial.number}" if name else f"trial {trial.number}"


def study_attr(ostudy: optuna.Study, attr: str, fatal: bool = True) -> Any:
    """The study's user attribute `attr`, checked; None when absent (or broken and not `fatal`)."""
    return read(study_where(ostudy), attr, ostudy.user_attrs.get(attr), _adapter(StudyRecord, attr), fatal)


def trial_attr(ostudy: optuna.Study | str, trial: optuna.trial.FrozenTrial, attr: str,
               fatal: bool = True) -> Any:
    """The trial's user attribute `attr`, checked; None when absent (or broken and not `fatal`)."""
    return read(trial_where(ostudy, trial), attr, trial.user_attrs.get(attr),
                _adapter(TrialRecord, attr), fatal)


def stored_config(ostudy: optuna.Study) -> StoredConfig | None:
    """The study's recorded config, checked; None when it records none."""
    return study_attr(ostudy, "config")


NAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,100}")  # a sweep's `loss_weights@train_subset:500` included


def study_name(name: Any, where: str = "--study-name") -> str:
    """A study name is a name: it becomes a folder, a job name and a line of a job script, so it
    holds letters, digits and `_.@:+-` only, at most 100 of them."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where} {shown(name)}: a study name is 1 to 100 letters, digits or _.@:+- "
                          "(it becomes a folder, a job name and a line of a job script)")
    return name


def within(param: Param, value: Any) -> str | None:
    """Why `value` lies outside `param`'s local distribution (its type, bounds, steps or choices),
    in words naming the bound; None when it lies inside."""
    if param.type == "categorical":
        same = any(type(value) is type(c) and value == c for c in param.choices)
        return None if same else f"not one of the choices {list(param.choices)}"
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if param.type == "int" and not isinstance(value, int) or not numeric:
        return f"not {'an integer' if param.type == 'int' else 'a number'}"
    if isinstance(value, float) and not math.isfinite(value) or not param.low <= value <= param.high:
        return f"outside [{param.low:g}, {param.high:g}]"
    step = param.step or (1 if param.type == "int" else None)
    if step is not None and abs((value - param.low) / step - round((value - param.low) / step)) > 1e-6:
        return f"not on the steps of {step:g} from {param.low:g}"
    return None
