"""A PBT member's answer as one solo run: its lineage read back from the study's `pbt_schedule`
records and turned into the `mhtrain.schedule.ScheduleReplay` entries that retrace it.

A member's state at its end was trained along a path: the last member it copied, up to that
member's epochs at the copy (recursively, along that member's own copies), then its own last
segment with its own batch order. The solo run starts as the path's first member (its seed, its
starting values) and, at each later stretch, takes that stretch's values and its member's batch
order. The records are data written by someone else: every field is checked, and a schedule that
is not one is refused in one line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from mhtrain import program
from mhtrain.config import compose
from mhtrain.pbt import SCHEDULE
from mhtrain.study import records
from mhtrain.study.local import local_for
from mhtrain.study.untrusted import refuse, scalar, seed_value, stored_overrides, trial_record

if TYPE_CHECKING:
    from mhtrain.study.records import StudyConfig


def segments(trial: optuna.trial.FrozenTrial, keys: Sequence[str],
             study: str | optuna.Study = "") -> list[dict]:
    """`trial`'s checked `pbt_schedule`: per stretch its `epoch`, `parent`, `parent_epoch` and the
    `values` of `keys` (None where it recorded none). The record is read through its schema; its
    values must lie inside the local search space and its epochs within the local trainer's (a
    copy, an order's skip of epochs); anything else is refused in one line naming the study and
    the trial. Given only a study's name (a figure), values are only checked to be numbers."""
    name = study if isinstance(study, str) else study.study_name
    where = records.trial_where(name, trial)
    if not isinstance(trial.user_attrs.get(SCHEDULE), list):
        refuse(where, f"{SCHEDULE} (not a list of segments)")
    raw = records.trial_attr(name, trial, SCHEDULE)
    local = local_for(study) if isinstance(study, optuna.Study) else None  # a figure: numbers will do
    params = {} if local is None else local.params
    top = None if local is None else local.max_epochs
    out = []
    for s in raw:
        values = s.model_extra or {}
        for key in keys:
            value = scalar(where, key, values.get(key))
            if value is None:
                continue  # not recorded: the run keeps its own value of it
            why = (records.within(params[key], value) if key in params else
                   None if isinstance(value, int | float) and not isinstance(value, bool) else "not a number")
            if why:
                refuse(where, f"{SCHEDULE} {key}={records.shown(value, 40)} ({why}: the local search space)")
        copied = s.parent_epoch if s.parent is not None else None
        if s.parent is not None and (copied is None or copied < 1):
            refuse(where, f"{SCHEDULE} parent_epoch={records.shown(copied)} (not an integer >= 1)")
        for field, epochs in (("epoch", s.epoch), ("parent_epoch", copied)):  # an order skips `epoch` of them
            if top is not None and epochs is not None and epochs > top:
                refuse(where, f"{SCHEDULE} {field}={epochs} (past the {top} epochs the local trainer runs)")
        out.append({"epoch": s.epoch, "parent": s.parent, "parent_epoch": copied,
                    "values": {k: values.get(k) for k in keys}})
    if out[0]["parent"] is not None or out[0]["epoch"] != 0:
        refuse(where, f"{SCHEDULE} (its first segment is not its own start at epoch 0)")
    return out


def _seed(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
    """The trial's seed, from its checked record: its batch order's seed too."""
    _, overrides = trial_record(ostudy, trial)
    seeds = [o.removeprefix("seed=") for o in overrides if o.startswith("seed=")]
    if len(seeds) != 1:
        refuse(records.trial_where(ostudy, trial), "overrides (no seed=N among them)")
    return int(seeds[0])


Trial = optuna.trial.FrozenTrial


def replay_node(schedule: list[dict], orders: bool = True) -> dict[str, Any]:
    """The config node of the callback that replays `schedule` (with its batch orders, or on the
    run's own seed)."""
    return {"_target_": "mhtrain.schedule.ScheduleReplay", "schedule": schedule, "orders": orders}


def retrain_config(ostudy: optuna.Study, trial: Trial, seed: int, root: str, overrides: Sequence[str],
                   suffix: str = "") -> DictConfig:
    """`trial`'s configuration re-trained with `seed` and `overrides` on top, in its own folder
    under `root` (composed, so checked before anything trains). A PBT member's is its lineage: the
    record of its first member, with the callback that replays its schedule's values on `seed`'s
    own batch order."""
    seed_value(f"study {ostudy.study_name}: a re-run of trial {trial.number}", seed)
    start, schedule = replayed(ostudy, trial)
    experiment, stored = trial_record(ostudy, start)
    kept = [o for o in stored if not o.startswith("seed=")]
    name = re.sub(r"[^A-Za-z0-9_.@:+-]", "_", ostudy.study_name)  # one folder a Hydra override can carry
    out = f"paths.output_dir={root}/{name}/trial{trial.number}_seed{seed}{suffix}"
    cfg = compose(experiment, [*kept, f"seed={seed}", *overrides, out])
    if schedule is not None:
        OmegaConf.update(cfg, "callbacks.pbt_replay", replay_node(schedule, orders=False), force_add=True)
    return cfg


def is_pbt(ostudy: optuna.Study) -> bool:
    """Whether the study's local config trains with population-based training."""
    return local_for(ostudy).pbt


def replayed(ostudy: optuna.Study, trial: Trial) -> tuple[Trial, list[dict] | None]:
    """The trial whose record a re-run of `trial` starts from, and the schedule it replays (None
    for a study without PBT: the trial itself, as searched). Its record is checked as data first."""
    stored_overrides(ostudy, trial)
    if is_pbt(ostudy) and not trial.user_attrs.get("default"):  # the default replays no schedule
        return lineage(ostudy, trial)
    return trial, None


def lineage(ostudy: optuna.Study, final: Trial) -> tuple[Trial, list[dict]]:
    """The path's first trial (the solo run's configuration) and the replay schedule of `final`."""
    keys = [p.key for p in local_for(ostudy).space]
    trials = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    stretches: list[tuple[Trial, dict, int]] = []  # (member, segment, solo epoch)
    number, upto, seen = final.number, None, set()
    while True:
        trial = trials.get(number)
        if trial is None:
            refuse(f"study {ostudy.study_name}", f"{SCHEDULE} parent {number} (no such trial)")
        segs = [s for s in segments(trial, keys, ostudy) if upto is None or s["epoch"] < upto]
        seg = segs[-1]
        if (number, seg["epoch"]) in seen:  # a sound path takes each segment at most once
            refuse(f"study {ostudy.study_name}, trial {final.number}",
                   f"{SCHEDULE} (its lineage has a cycle)")
        seen.add((number, seg["epoch"]))
        stretches.append((trial, seg, 0 if seg["parent"] is None else seg["parent_epoch"]))
        if seg["parent"] is None:
            break
        number, upto = seg["parent"], seg["parent_epoch"]
    stretches.reverse()
    schedule = []
    for i, (trial, seg, epoch) in enumerate(stretches):
        if i and epoch <= stretches[i - 1][2]:
            refuse(f"study {ostudy.study_name}, trial {trial.number}",
                   f"{SCHEDULE} (copy epochs go backwards)")
        order = None if i == 0 else {"seed": _seed(ostudy, trial), "skip": seg["epoch"]}
        values = {k: v for k, v in seg["values"].items() if v is not None}
        schedule.append({"epoch": epoch, "values": values, "order": order, "trial": trial.number})
    return stretches[0][0], schedule


def pbt_lines(ostudy: optuna.Study, study: StudyConfig) -> str:
    """The best member's schedule and lineage, said after a run's summary (its records checked)."""
    keys = [p.key for p in study.search_space]
    done = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if SCHEDULE in t.user_attrs]
    if not done:
        return "pbt: no member has finished yet"
    best = max(done, key=lambda t: t.value if study.direction == "maximize" else -t.value)
    lines = [f"pbt: trial {best.number}'s schedule (its user attribute {SCHEDULE}; the lineage figure "
             "and this schedule are on the study's page in optuna-dashboard; "
             f"`{program()} -m mhtrain.study export` writes it as a solo replay):"]
    for seg in segments(best, keys, ostudy):
        source = "its own start" if seg["parent"] is None else f"copied trial {seg['parent']}"
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in seg["values"].items())
        lines.append(f"  from epoch {seg['epoch']}: {source}; {values}")
    return "\n".join(lines)
