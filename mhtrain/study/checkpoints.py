"""Checkpoints of search trials, kept only when asked (`--keep-checkpoints best|all`).

A trial then saves its best epoch's weights while it trains; before it is told, they go to an
Optuna artifact store (a folder beside a file storage), so optuna-dashboard lists them on the
trial and `export` hands the best one over, and the trial's own copy is deleted. `best` keeps a
trial's checkpoint only if it beats every trial finished before it: the study's best always has
one, and a study of N trials keeps about ln N of them rather than N.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from mhtrain import ConfigError
from mhtrain.study import folders, records
from mhtrain.study.records import ARTIFACT_DIR as ARTIFACT_DIR  # re-exported: where it was defined
from mhtrain.study.storage import artifact_dir

if TYPE_CHECKING:
    from mhtrain.study.records import StudyConfig

KEEP = ("none", "best", "all")
CHECKPOINT = "checkpoint"  # trial user attribute: the artifact id of its checkpoint


def remember_store(ostudy: optuna.Study, storage_url: str) -> Path:
    """Record the study's artifact folder on it once, so every worker and `export` use one (a
    recorded one is taken only inside the project's roots, and read once per process)."""
    if folders.stored_folder(ostudy, ARTIFACT_DIR, storage_url) is None:
        ours = artifact_dir(storage_url)
        ostudy.set_user_attr(ARTIFACT_DIR, str(ours))
        return folders.adopt(ostudy, ARTIFACT_DIR, ours)
    return folders.stored_folder(ostudy, ARTIFACT_DIR, storage_url)


def _store(ostudy: optuna.Study, storage_url: str | None = None) -> FileSystemArtifactStore:
    folder = folders.stored_folder(ostudy, ARTIFACT_DIR, storage_url)
    if folder is None:
        raise ConfigError(f"{records.study_where(ostudy)} records no {ARTIFACT_DIR}: where to keep "
                          "checkpoints is set when a run keeps them")
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _beats_the_best(ostudy: optuna.Study, value: float) -> bool:
    try:
        best = ostudy.best_value
    except ValueError:
        return True  # nothing finished yet
    return value < best if ostudy.direction == optuna.study.StudyDirection.MINIMIZE else value > best


def keep(study: StudyConfig, trial: optuna.Trial, checkpoint: str | None, value: float | None) -> str | None:
    """Store the trial's checkpoint as an artifact if the study keeps it (`value` is None for a
    pruned trial); returns the artifact id. Runs before `tell`: a finished trial is read-only."""
    if study.keep_checkpoints == "none" or not checkpoint:
        return None
    path = Path(checkpoint)
    try:
        if study.keep_checkpoints == "best" and (value is None or not _beats_the_best(trial.study, value)):
            return None
        artifact_id = upload_artifact(artifact_store=_store(trial.study), file_path=str(path),
                                      study_or_trial=trial, mimetype="application/octet-stream")
        trial.set_user_attr(CHECKPOINT, artifact_id)
        return artifact_id
    finally:
        path.unlink(missing_ok=True)


def hand_over(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, dest: Path,
              storage_url: str) -> Path | None:
    """Download the trial's stored checkpoint to `dest`; None if it has none. The stored folder
    and id are checked: neither may lead out of the project's roots."""
    artifact_id = records.trial_attr(ostudy, trial, CHECKPOINT)
    if artifact_id is None or folders.stored_folder(ostudy, ARTIFACT_DIR, storage_url) is None:
        return None
    store = _store(ostudy, storage_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        download_artifact(artifact_store=store, file_path=str(dest), artifact_id=artifact_id)
    except ArtifactNotFound:
        raise ConfigError(f"{records.trial_where(ostudy, trial)}: its checkpoint {artifact_id} is not in "
                          f"{folders.stored_folder(ostudy, ARTIFACT_DIR)}; nothing to hand over") from None
    return dest
