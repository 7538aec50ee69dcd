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
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from mhtrain.config import compose
from mhtrain.study.pbt import SCHEDULE
from mhtrain.study.untrusted import recorded_config, refuse, scalar, searched, trial_record


def _int(where: str, key: str, value: Any, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        refuse(where, f"{SCHEDULE} {key}={str(value)[:40]!r} (not an integer >= {low})")
    return value


def segments(trial: optuna.trial.FrozenTrial, keys: Sequence[str], study: str = "") -> list[dict]:
    """`trial`'s checked `pbt_schedule`: per stretch its `epoch`, `parent`, `parent_epoch` and the
    `values` of `keys`; anything else is refused in one line naming `study` and the trial."""
    where = f"study {study}, trial {trial.number}" if study else f"trial {trial.number}"
    raw = trial.user_attrs.get(SCHEDULE)
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        refuse(where, f"{SCHEDULE} (not a list of segments)")
    out = []
    for s in raw:
        parent, copied = s.get("parent"), s.get("parent_epoch")
        seg = {"epoch": _int(where, "epoch", s.get("epoch")),
               "parent": None if parent is None else _int(where, "parent", parent),
               "parent_epoch": None if parent is None else _int(where, "parent_epoch", copied, 1),
               "values": {k: scalar(where, k, s.get(k)) for k in keys}}
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in seg["values"].values()):
            refuse(where, f"{SCHEDULE} values (not numbers for {', '.join(keys)})")
        out.append(seg)
    if out[0]["parent"] is not None or out[0]["epoch"] != 0:
        refuse(where, f"{SCHEDULE} (its first segment is not its own start at epoch 0)")
    return out


def _seed(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
    """The trial's seed, from its checked record: its batch order's seed too."""
    _, overrides = trial_record(ostudy, trial)
    seeds = [o.removeprefix("seed=") for o in overrides if o.startswith("seed=")]
    if len(seeds) != 1 or not seeds[0].lstrip("-").isdigit():
        refuse(f"study {ostudy.study_name}, trial {trial.number}", "overrides (no seed=N among them)")
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
    """Whether the study's recorded config trains with population-based training."""
    return bool(recorded_config(ostudy).get("pbt"))


def replayed(ostudy: optuna.Study, trial: Trial) -> tuple[Trial, list[dict] | None]:
    """The trial whose record a re-run of `trial` starts from, and the schedule it replays (None
    for a study without PBT: the trial itself, as searched)."""
    if is_pbt(ostudy) and not trial.user_attrs.get("default"):  # the default replays no schedule
        return lineage(ostudy, trial)
    return trial, None


def lineage(ostudy: optuna.Study, final: Trial) -> tuple[Trial, list[dict]]:
    """The path's first trial (the solo run's configuration) and the replay schedule of `final`."""
    keys = list(searched(ostudy))
    trials = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    stretches: list[tuple[Trial, dict, int]] = []  # (member, segment, solo epoch)
    number, upto, seen = final.number, None, set()
    while True:
        trial = trials.get(number)
        if trial is None:
            refuse(f"study {ostudy.study_name}", f"{SCHEDULE} parent {number} (no such trial)")
        segs = [s for s in segments(trial, keys, ostudy.study_name) if upto is None or s["epoch"] < upto]
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
        schedule.append({"epoch": epoch, "values": seg["values"], "order": order, "trial": trial.number})
    return stretches[0][0], schedule
