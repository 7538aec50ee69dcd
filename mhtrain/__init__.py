"""mhtrain: Optuna studies over multihead image classifiers trained with Lightning."""

from __future__ import annotations

import sys
from collections.abc import Callable


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
