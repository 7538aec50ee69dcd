"""The folders a study records, where its trials write (`output_root`) and where its checkpoints
are kept (`artifact_dir`): each is read once per opened study in a process, checked to lie inside
the project's runs folder (or, for checkpoints, the storage's own artifact folder), and that
checked value is the one every later trial uses. Another process that changes the record
mid-run changes nothing here; a record outside those roots is one line naming the study."""

from __future__ import annotations

import weakref
from pathlib import Path

import optuna

from mhtrain import ConfigError
from mhtrain.study.records import ARTIFACT_DIR, OUTPUT_ROOT, WHY, shown, study_attr, study_where
from mhtrain.study.storage import artifact_dir

RUNS = Path("runs")  # the project's runs folder (relative paths resolve from where commands run)
_checked: weakref.WeakKeyDictionary[optuna.Study, dict[str, Path | None]] = weakref.WeakKeyDictionary()


def _inside(value: str, roots: tuple[Path, ...]) -> Path | None:
    """`value` resolved, if it lies inside one of `roots` (links followed); else None."""
    try:
        path = Path(value).resolve()
        return path if any(path.is_relative_to(r) for r in roots) else None
    except (ValueError, OSError, RuntimeError):  # a NUL byte, a loop of links: not a folder of ours
        return None


def roots(attr: str, storage_url: str | None) -> tuple[Path, ...]:
    """Where a stored folder may lie: trials write under runs/; checkpoints may also be kept in
    the storage's artifact folder (beside a SQLite or Journal file)."""
    if attr == ARTIFACT_DIR and storage_url is not None:
        return RUNS.resolve(), artifact_dir(storage_url)
    return (RUNS.resolve(),)


def stored_folder(ostudy: optuna.Study, attr: str, storage_url: str | None = None) -> Path | None:
    """The study's folder `attr`, resolved and checked on its first read here, then that value;
    None when the study records none."""
    seen = _checked.setdefault(ostudy, {})
    if attr not in seen:
        value = study_attr(ostudy, attr)
        if value is None:
            return None  # not recorded yet: read again next time (the runner records it first)
        inside = roots(attr, storage_url)
        path = _inside(value, inside)
        if path is None:
            raise ConfigError(f"{study_where(ostudy)}: {attr} {shown(value, 120)} refused (not inside "
                              f"{' or '.join(map(str, inside))}); {WHY}")
        seen[attr] = path
    return seen[attr]


def study_folder(ostudy: optuna.Study) -> Path:
    """Where the study's trials write (each in `trial_NNNN` inside it)."""
    folder = stored_folder(ostudy, OUTPUT_ROOT)
    if folder is None:
        raise ConfigError(f"{study_where(ostudy)} records no {OUTPUT_ROOT}: it was not opened by a study "
                          "run; run its study command to resume it")
    return folder


def check(ostudy: optuna.Study, storage_url: str) -> None:
    """Read and check both folders now, before any trial (a resumed run, a new worker)."""
    for attr in (OUTPUT_ROOT, ARTIFACT_DIR):
        stored_folder(ostudy, attr, storage_url)


def adopt(ostudy: optuna.Study, attr: str, folder: Path) -> Path:
    """Record `folder`, which this process chose and stored itself, as the checked value."""
    _checked.setdefault(ostudy, {})[attr] = folder.resolve()
    return folder.resolve()
