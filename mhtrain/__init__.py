"""mhtrain: Optuna studies over multihead image classifiers trained with Lightning."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ConfigError(ValueError):
    """A configuration that cannot work, found before any epoch runs; the message is one line."""


class DataError(RuntimeError):
    """Data that is missing, damaged or not what a config says; the message is one line."""


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
