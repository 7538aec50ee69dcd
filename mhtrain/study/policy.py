"""The failure policy of a study, in one place, as Optuna's `optimize(catch=…)` is one argument:
which errors a study survives, how many failures end it, how often a dead worker's trial and a
dead worker are replaced.

Two modules tell Optuna a trial's state. The lifecycle tells every trial this process runs
(including its over-budget step-back). The reaper (`ledger.reap`, and for RDB storages Optuna's
heartbeat callback built in `storage`) fails trials whose process died: no lifecycle of theirs
is left to tell anything."""

from __future__ import annotations

import optuna

from mhtrain import ConfigError, DataError
from mhtrain.study.interrupt import StudyInterrupted

MAX_FAILURES = 3  # failed engine runs (a trial, or a population) in one worker before it gives up
MAX_RETRIES = 3  # re-runs of a trial whose worker died (killed, preempted) before it is left FAIL
MAX_REPLACEMENTS = 3  # dead workers replaced per worker slot before the supervisor gives up

# Errors that would fail every trial alike: the study stops at the first, never retries it.
FATAL = (ConfigError, DataError, StudyInterrupted, optuna.exceptions.StorageInternalError)


def config_error(error: Exception) -> ConfigError | None:
    """Lightning's verdict on a config it only judges mid-fit (a monitored metric that is never
    logged, say) as one line; None for anything else."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if not isinstance(error, MisconfigurationException):
        return None
    reason = " ".join(str(error).split())[:300]
    return ConfigError(f"Lightning refused this config in the first trial: {reason}")


def after_failure(error: Exception, failures: int) -> None:
    """Raise when the study must stop after its `failures`-th failed engine run, ended by `error`:
    a config, data, storage or stop error at once, anything else (a NaN, an out-of-memory, a flaky
    disk: one trial's bad luck) once `MAX_FAILURES` runs have failed in this worker."""
    if isinstance(error, FATAL):
        raise error
    if (as_config := config_error(error)) is not None:
        raise as_config from error
    if failures >= MAX_FAILURES:
        raise error
