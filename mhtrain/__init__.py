"""mhtrain: Optuna studies over multihead image classifiers trained with Lightning."""

from __future__ import annotations

import logging
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

# The shipped configs: experiments, studies and their parts (Hydra's search path).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Messages that tell a user of this tool nothing, silenced in one place (`quiet`), never on import.
NOISE = (
    r".*isinstance\(treespec, LeafSpec\).*",  # lightning 2.6 on torch 2.14: its own pytree use, every fit
    r".*smaller than the logging interval.*",  # metrics are logged per epoch, not per step
    r".* is experimental \(supported from",  # optuna: reaping stale trials, metric names; stable in practice
    r"Heartbeat of storage is supposed to be used with",  # ask/tell trials beat from a thread of ours
    r"The `srun` command is available",  # lightning, every fit where SLURM is installed: no trial uses srun
)


def quiet() -> None:
    """Silence the known noise above and Lightning's per-run banners (a study shows one progress
    bar and a summary). Called where work starts: `build`, the runner, the command lines."""
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def program(name: str = "python") -> str:
    """How a printed command names `name` ("python", or a console script of this environment such
    as "optuna-dashboard") so that it runs as typed in a fresh shell, the environment not activated:
    its path in this environment, relative to the working directory when it lies inside it."""
    path = Path(sys.executable)
    if name != "python":
        path = path.with_name(name)
    if path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())  # `.venv/bin/optuna-dashboard`
    return shlex.quote(str(path))


class ConfigError(ValueError):
    """A configuration that cannot work, found before any epoch runs; the message is one line."""


class DataError(RuntimeError):
    """Data that is missing, damaged or not what a config says; the message is one line."""


def quiet_ctrl_c_while_starting() -> None:
    """Exit 130 without a traceback on a Ctrl-C during the seconds that importing torch takes;
    the command's own handler replaces this one once it is ready. Called by the scripts only:
    importing the library installs no handler."""
    import os
    import signal

    def stop(signum: int, frame: object) -> None:
        print("interrupted while starting", file=sys.stderr)
        os._exit(130)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def one_line_errors(main: Callable[[], int | None]) -> int:
    """The one error path of every command line: a bad config or bad data is one `error:` line
    and exit 2, Ctrl-C exit 130; anything else is a bug and keeps its traceback."""
    try:
        return main() or 0
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
