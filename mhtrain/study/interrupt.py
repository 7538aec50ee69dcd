"""One clean stop for a whole study: a signal only raises a flag; trials check it between
batches and the runner before it starts anything, so no exception ever lands inside Optuna's or
Lightning's bookkeeping and nothing new starts after a Ctrl-C.

The handler touches nothing but a plain attribute: taking a lock there (a threading or
multiprocessing Event) can deadlock with the very wait it interrupts. The runner passes the
stop on to its workers through a shared event, from its own loop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from typing import Any


class StudyInterrupted(Exception):
    """SIGINT/SIGTERM during a study: running trials end FAIL, the summary still prints."""


class _Flag:
    raised = False


_shared: Any = None  # a multiprocessing Event: set by the runner, read by its workers
POLL_S = 0.1


def request(*_: object) -> None:
    """Ask this process to stop (a signal handler: sets a flag and nothing else)."""
    _Flag.raised = True


def requested() -> bool:
    return _Flag.raised or (_shared is not None and _shared.is_set())


def check() -> None:
    """Raise StudyInterrupted if a stop was asked for: called where work may begin or go on."""
    if requested():
        raise StudyInterrupted("interrupted")


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`, waking early on a stop; True if one was asked for."""
    deadline = time.monotonic() + seconds
    while not requested() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return requested()


def install(shared: Any = None, ignore_sigint: bool = False) -> dict:
    """SIGINT/SIGTERM set the stop flag; returns the previous handlers for `restore`. Workers
    ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the runner alone decides)
    and stop on SIGTERM or on the runner's shared event."""
    global _shared
    _shared = shared
    _Flag.raised = False
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else request)
    signal.signal(signal.SIGTERM, request)
    return previous


def restore(previous: dict) -> None:
    global _shared
    for s, handler in previous.items():
        signal.signal(s, handler)
    _shared = None


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the runner (`parent`) dies, even by SIGKILL, so no worker
    is orphaned (its running trial then ends FAIL instead of running on unowned)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the runner's stop event only
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        request()
