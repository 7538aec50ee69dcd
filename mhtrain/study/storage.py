"""Where studies live: SQLite by default, a Journal file for many local processes, PostgreSQL
for many machines. Every URL is checked before anything is written, so a bad one costs nothing;
RDB storages keep a heartbeat so a killed worker's trials are retried (through `policy.requeue`,
the one retry path)."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from mhtrain import ConfigError
from mhtrain.study import records
from mhtrain.study.ledger import end_runs
from mhtrain.study.policy import requeue
from mhtrain.urls import masked, scrubbed

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
HEARTBEAT_S = 10
URL_FORMS = "sqlite:///FILE.db, FILE.journal or postgresql+psycopg://…"
_SQLITE_MAGIC = b"SQLite format 3\x00"
# how long a process that lost the race to create a new storage's schema keeps re-opening it
SCHEMA_RACE_S = 60.0


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or Journal URL (None for a server)."""
    if url.endswith(".journal"):
        return Path(url.removeprefix("journal:///"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def artifact_dir(storage_url: str) -> Path:
    """Beside a SQLite or Journal file (`runs/optuna.db` -> `runs/optuna-artifacts/`); under
    `runs/` for a database server (on many machines, make that a shared folder)."""
    file = storage_file(storage_url)
    if file is None:
        return Path("runs/artifacts").resolve()
    file = file.resolve()
    return file.with_name(f"{file.stem}-artifacts")


def check_storage(url: str, must_exist: bool = False) -> None:
    """Refuse, before anything is written, a URL that would lose results or cannot be created:
    in-memory SQLite, a directory, an unwritable place, a file that is not a database."""
    path, shown = storage_file(url), masked(url)  # a password in the URL is never printed
    if (url.startswith("sqlite://") and not url.startswith("sqlite:///")) or (
            path is None and not url.startswith(("postgresql", "mysql"))):
        raise ConfigError(f"--storage {shown}: use {URL_FORMS}")
    if path is None:
        return
    if url.removeprefix("sqlite:///") in ("", ".") or url.removeprefix("sqlite:///").startswith(":memory:"):
        raise ConfigError(f"--storage {shown} is in memory: every result would be lost at exit; "
                          "use sqlite:///FILE.db")
    if path.is_dir():
        raise ConfigError(f"--storage {shown}: {path} is a directory; name a file inside it")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"--storage {shown}: {path} is not readable and writable")
        if url.startswith("sqlite:///") and path.stat().st_size:
            with path.open("rb") as f:
                if f.read(16) != _SQLITE_MAGIC:
                    raise ConfigError(f"--storage {shown}: {path} is not a SQLite database; "
                                      "point --storage at the right file or move this one away")
        return
    if must_exist:
        raise ConfigError(f"--storage {shown}: no such file; check the path (nothing was created)")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--storage {shown}: cannot create {path} ({parent} is not a writable directory)")


def repair_journal(path: Path) -> int:
    """Drop a torn last record (a crash mid-write: the file does not end in a newline) so new
    records start on a line of their own; returns the bytes dropped. Writers append under the
    journal's lock, so a torn tail seen under that lock is never a write still in progress."""
    if not path.is_file() or not path.stat().st_size:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    while not lock.acquire():
        time.sleep(0.05)
    try:
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)
        print(f"warning: {path} ended in a torn record ({len(data) - keep} bytes, a crash "
              "mid-write); dropped it, every complete record kept", file=sys.stderr)
        return len(data) - keep
    finally:
        lock.release()


def retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """What follows a trial whose heartbeat stopped (a worker on another machine died), once
    Optuna's `fail_stale_trials` failed it: its tracking runs end and it is queued again through
    the one retry path, as the local reaper does."""
    end_runs(study, trial)
    requeue(study, trial)


def open_storage(url: str, heartbeat: int = HEARTBEAT_S,
                 must_exist: bool = False) -> optuna.storages.BaseStorage:
    """`*.journal` → Journal file; `sqlite:///…`, `postgresql…` → RDB with heartbeat."""
    check_storage(url, must_exist)
    path = storage_file(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--storage {masked(url)}: cannot create {path.parent} "
                              f"({e.strerror})") from None
    if url.endswith(".journal"):
        repair_journal(path)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except ValueError as e:  # a damaged record before the last one: not ours to guess at
            raise ConfigError(f"--storage {masked(url)} is damaged ({e}); restore it from a copy") from None
    deadline = time.monotonic() + SCHEMA_RACE_S
    while True:
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" to Optuna: every command said so
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                  heartbeat_stale_trial_callback=retry_stale,
                                  # one idle connection a process, not SQLAlchemy's 3: PostgreSQL's
                                  # default 100 then holds ~90 workers (bench/storage_load.py)
                                  engine_kwargs={"pool_pre_ping": True, "pool_size": 1}
                                  if url.startswith("postgresql") else None)
        except Exception as e:  # noqa: BLE001 - any driver error becomes one clear line
            if lost_schema_race(e) and time.monotonic() < deadline:
                time.sleep(random.uniform(0.05, 0.5))  # the winner is writing the schema: re-open
                continue
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot open storage {masked(url)}: {scrubbed(reason)}") from None


def lost_schema_race(error: Exception) -> bool:
    """Whether opening a new RDB storage failed only because another process was creating its
    schema at the same moment (optuna/optuna#1092): both find no tables, both create them and
    stamp the schema version, and the slower one meets the faster one's rows. Re-opening then
    finds a finished schema. Anything else (a wrong password, not a database) is not retried."""
    from sqlalchemy import exc

    text = str(error).lower()
    return isinstance(error, exc.IntegrityError) or (
        isinstance(error, exc.OperationalError | exc.ProgrammingError)
        and ("already exists" in text or "database is locked" in text))


def load_existing(study_name: str, url: str) -> optuna.Study:
    """A study that must already exist (export, compare, warm start): one line if it does not. Its
    name is checked as a name first; the names the storage lists are shown as data."""
    records.study_name(study_name, "study name")
    storage = open_storage(url, must_exist=True)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        listed = ", ".join(records.shown(n, 40) for n in names[:20]) + (", …" if len(names) > 20 else "")
        raise ConfigError(f"no study named {study_name!r} in {masked(url)}; it holds: "
                          f"{listed or 'no studies'}") from None


class Heartbeat:
    """Beats for every trial this process runs, one or a whole population, from one thread.

    Optuna's own heartbeat thread lives inside `optimize`; trials made with ask/tell need this.
    Storages without heartbeats (Journal files) are reaped by owner process instead."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        # an RDB storage as a study holds it (Optuna wraps it in a cache) beats; a Journal file has none
        beats = getattr(storage, "get_heartbeat_interval", None)
        self.interval = beats() if callable(beats) else None
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_ids: Iterable[int]) -> None:
        for trial_id in trial_ids:
            self.trial_ids.add(trial_id)
            if self.interval:
                self.storage.record_heartbeat(trial_id)

    def remove(self, trial_ids: Iterable[int]) -> None:
        self.trial_ids.difference_update(trial_ids)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                # a missed beat is retried at the next interval; the grace period covers it
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
