"""Where studies live: SQLite by default, a Journal file for many local processes, PostgreSQL
for many machines. RDB storages keep a heartbeat so a killed worker's trial is retried."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from mhtrain import ConfigError

# heartbeats and metric names are stable in practice; optuna still labels them experimental
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
HEARTBEAT_S = 10


def open_storage(url: str, heartbeat: int = HEARTBEAT_S) -> optuna.storages.BaseStorage:
    """`*.journal` → Journal file; `sqlite:///…`, `postgresql…` → RDB with heartbeat."""
    if url.endswith(".journal"):
        path = Path(url.removeprefix("journal:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif not url.startswith(("postgresql", "mysql")):
        raise ConfigError(f"--storage {url}: use sqlite:///FILE.db, FILE.journal or postgresql+psycopg://…")
    try:
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            engine_kwargs={"pool_pre_ping": True} if url.startswith("postgresql") else None,
        )
    except Exception as e:  # noqa: BLE001 - any driver error becomes one clear line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot open storage {url}: {reason}") from None
