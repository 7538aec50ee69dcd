"""The swept comparison: the same arms compared at every value of one config key (where do the
extra heads help: with 500 training images, with all of them?). At each value every arm's study
is searched on its own (`<arm>@<key>:<value>`, same storage, trial budget and search fidelity for
every arm), its best configuration re-trained for the same seeds with the value applied and tested
once on the full test split. Studies and re-runs are stored: a second run re-trains nothing, an
interrupted sweep resumes. `plan` finds everything wrong with the input before anything trains."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from mhtrain import ConfigError
from mhtrain.config import compose, prepare_data
from mhtrain.evaluate.reruns import RERUN_MODE, Arm, OnDone, rerun_best
from mhtrain.study import records, runner, study_config
from mhtrain.study.storage import check_storage

_ABSENT = object()
SEARCH = ("trainer.max_epochs=3",)  # the default search fidelity, the same for every arm
# a subset sweep's re-runs draw their training images with their own seed, so its seeds measure
# the effect of a size, not one subset (its searches keep the first N, the same for every trial)
PER_SEED_SUBSET = "++data.subset_seed=${seed}"
N_TRIALS = 12  # the default budget of each study of a sweep


def key_of(override: str) -> str:
    """The config key an override sets (`++a.b=1` -> `a.b`), to find two settings of one key."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass(frozen=True)
class Over:
    """The swept key and its values, as given (`data.train_subset=500,2000,null`)."""

    key: str
    values: tuple[str, ...]

    @property
    def short(self) -> str:
        return key_of(self.key).rsplit(".", 1)[-1]

    @property
    def is_subset(self) -> bool:
        return key_of(self.key) == "data.train_subset"

    def override(self, value: str) -> str:
        return f"{self.key}={value}"


def parse_over(text: str) -> Over:
    """`KEY=V1,V2,...` as given on the command line; one key, distinct non-empty values."""
    key, sep, rest = text.partition("=")
    if not sep or not key.strip() or not rest.strip():
        raise ConfigError(f"--over {text}: give one key and its values, e.g. "
                          "--over data.train_subset=500,2000,10000,null")
    values = tuple(v.strip() for v in rest.split(","))
    if any(not v for v in values):
        raise ConfigError(f"--over {text}: a value is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"--over {text}: a value is given twice")
    return Over(key.strip(), values)


@dataclass(frozen=True)
class Point:
    """One value of the sweep: as given, as a table shows it, and its place on the x axis."""

    value: str
    label: str
    x: float | None  # None: the values are not numbers, the axis is categorical


@dataclass(frozen=True)
class Cell:
    """One arm at one value: the study to search and the re-runs' extra overrides."""

    point: Point
    arm: str
    study: records.StudyConfig
    rerun: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A sweep checked in full before it starts: every study config, every re-run setting."""

    seeds: tuple[int, ...]
    points: tuple[Point, ...]
    cells: tuple[Cell, ...]  # value by value, arm by arm
    metric: str  # the test metric every arm is judged by
    full: int | None  # training images of the whole training split (after validation), if read


_sizes: dict[str, int] = {}


def training_images(cfg: DictConfig) -> tuple[int, int]:
    """(images this config trains on, images the training split holds besides the validation
    set), read from the data itself by `prepare_data`, which refuses a larger `train_subset`."""
    key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
    if key not in _sizes:
        _sizes[key] = prepare_data(cfg)
    return cfg.data.get("train_subset") or _sizes[key], _sizes[key]


def study_name(arm: str, over: Over, value: str) -> str:
    """`loss_weights@train_subset:500`: the arm's study at one value. Not `=`: the name becomes a
    folder in a Hydra override (`paths.output_dir=...`), where `=` cannot stand unquoted."""
    return f"{arm}@{over.short}:{re.sub(r'[^A-Za-z0-9_.+-]', '_', value)}"


def _points(over: Over, sizes: dict[str, int]) -> tuple[Point, ...]:
    if over.is_subset:
        return tuple(Point(v, f"{sizes[v]:,}" + (" (all)" if v == "null" else ""), float(sizes[v]))
                     for v in over.values)
    try:
        xs = [float(v) for v in over.values]
    except ValueError:
        return tuple(Point(v, v, None) for v in over.values)
    return tuple(Point(v, v, x) for v, x in zip(over.values, xs, strict=True))


def plan(over: Over, arms: Sequence[str], search: Sequence[str], rerun: Sequence[str],
         seeds: Sequence[int], n_trials: int, storage_url: str, per_parameter: bool = False) -> Plan:
    """Compose and check every study and every re-run configuration of the sweep, read the data
    sizes, and refuse bad input in one line before anything is trained or written. With
    `per_parameter`, an arm gets `n_trials` per parameter it searches: an arm searching three
    keys is not judged on a third of the search a one-key arm gets."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials {n_trials}: must be >= 1")
    for overrides, where in ((search, "--search"), (rerun, "the re-run overrides")):
        if any(key_of(o) == key_of(over.key) for o in overrides):
            raise ConfigError(f"--over {over.key} is swept; do not set it in {where} too")
    check_storage(storage_url)
    metrics: dict[str, str] = {}
    budget: dict[str, int] = {}
    sizes: dict[str, int] = {}
    full = None
    for arm in arms:
        base = study_config.load(arm, n_trials=n_trials, extra_overrides=list(search))
        cfg = compose(base.experiment, base.overrides)
        if not over.key.startswith("+") and OmegaConf.select(cfg, over.key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"--over {over.key}: no such key in experiment {base.experiment} "
                              f"(arm {arm}); check the spelling against `python -m mhtrain.train --cfg job`")
        metrics[arm] = base.metric
        budget[arm] = n_trials * (len(base.search_space) if per_parameter else 1)
    if len(set(metrics.values())) > 1:
        raise ConfigError(f"the arms optimize different metrics {metrics}: nothing to compare")
    if len({study_name("", over, v) for v in over.values}) < len(over.values):
        raise ConfigError(f"--over {over.key}: two values would share one study name; "
                          "use values made of letters, digits and . + - _")
    staged = []
    per_seed = (PER_SEED_SUBSET,) if over.is_subset else ()
    for value in over.values:
        for arm in arms:
            setting = over.override(value)
            try:
                study = study_config.load(arm, name=study_name(arm, over, value), n_trials=budget[arm],
                                   extra_overrides=[*search, setting])
                training_images(compose(study.experiment, study.overrides))
                cfg = compose(study.experiment, [*study.overrides, *rerun, setting, *per_seed, *RERUN_MODE])
                sizes[value], full = training_images(cfg)
            except ConfigError as e:
                raise ConfigError(f"--over {setting} (arm {arm}): {e}") from None
            staged.append((value, arm, study))
    points = {p.value: p for p in _points(over, sizes)}
    cells = [Cell(points[v], arm, study, (*rerun, over.override(v), *per_seed)) for v, arm, study in staged]
    return Plan(tuple(seeds), tuple(points.values()), tuple(cells),
                "test/" + metrics[arms[0]].removeprefix("val/"), full)


@dataclass
class Tally:
    """What a sweep did now and what it found stored: the end-of-run summary counts it."""

    searched: int = 0  # trials run now
    stored_trials: int = 0
    trained: int = 0  # re-runs trained now
    stored: int = 0
    seconds: float = 0.0  # training time of the re-runs trained now


def run(p: Plan, storage_url: str, say: Callable[[str], None] = print, progress: bool = False,
        on_done: OnDone = lambda *_: None) -> tuple[list[list[Arm]], Tally]:
    """Search and re-run every cell in order; per point, the arms re-trained (in the plan's order)."""
    tally, out = Tally(), []

    def done(name: str, seed: int, value: float, trained: bool, seconds: float) -> None:
        if trained:
            tally.trained, tally.seconds = tally.trained + 1, tally.seconds + seconds
        else:
            tally.stored += 1
        on_done(name, seed, value, trained, seconds)

    for i, point in enumerate(p.points, 1):
        arms = []
        for cell in (c for c in p.cells if c.point == point):  # in the order of the arms
            started = datetime.datetime.now()
            ostudy, outcome = runner.run(cell.study, storage_url, progress=progress)
            if outcome.interrupted:
                raise KeyboardInterrupt
            finished = [t for t in ostudy.get_trials(deepcopy=False)
                        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            now = sum(1 for t in finished if t.datetime_complete and t.datetime_complete >= started)
            tally.searched += now
            tally.stored_trials += len(finished) - now
            try:
                best = ostudy.best_trial
            except ValueError:
                raise ConfigError(f"study {ostudy.study_name} has no completed trial after "
                                  f"{len(finished)}; raise --n-trials") from None
            say(f"[{i}/{len(p.points)}] {ostudy.study_name}: {now} trial(s) searched now, "
                f"{len(finished) - now} stored; best {p.metric.replace('test/', 'val/', 1)} "
                f"{best.value:.4f} (trial {best.number})")
            arms.append(rerun_best(ostudy, p.seeds, cell.rerun, on_done=done, label=cell.arm))
        out.append(arms)
    return out, tally
