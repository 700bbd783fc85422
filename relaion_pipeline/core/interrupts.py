"""Ctrl-C and SIGTERM stop a command, even while Dagster runs one of its steps.

Dagster turns SIGINT and SIGTERM inside a step into a failed step (`DagsterExecutionInterruptedError`) and
goes on with the run: a command that ran the next shard and published would ignore the operator. Here a
signal raises `Interrupted` wherever the command is, and one that Dagster took is still seen: Python writes
the number of every signal it receives to a wakeup pipe, which `raise_if_signalled` reads between steps.
Every write is atomic (a temporary name renamed into place), so an interrupted command leaves nothing
half-written under a final name, and the release, written last, is never published.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pipe: list[int] = []  # the read end of the wakeup pipe while `interruptible` is active


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; `exit_code` is the shell's 128 + its number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible():
    """Within it, SIGINT and SIGTERM raise `Interrupted`, and `raise_if_signalled` raises it for a signal that
    another handler (Dagster's) took meanwhile. Only the main thread can handle signals: elsewhere it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    _pipe.append(read)
    try:
        yield
    finally:
        _pipe.remove(read)
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read)
        os.close(write)


@contextmanager
def deferred():
    """Within `interruptible`, SIGINT and SIGTERM only mark the command as interrupted, and the caller stops at
    its next `raise_if_signalled`: for code that runs Dagster steps (which take the signal themselves) and
    whose own work between them is short, so that no library call is left in the middle by an exception."""
    if threading.current_thread() is not threading.main_thread() or not _pipe:
        yield
        return
    previous = {s: signal.signal(s, _mark) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _mark(signum, frame) -> None:
    """Nothing to do: Python has written the signal's number to the wakeup pipe already."""


def raise_if_signalled() -> None:
    """Raise `Interrupted` if SIGINT or SIGTERM arrived since the last call (whichever handler took it)."""
    for read in _pipe:
        try:
            received = os.read(read, 1024)
        except BlockingIOError:
            continue
        for signum in received:
            if signum in SIGNALS:
                raise Interrupted(signum)
