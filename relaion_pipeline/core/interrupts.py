"""Ctrl-C and SIGTERM stop a command, even while Dagster runs one of its steps.

Dagster turns SIGINT and SIGTERM inside a step into a failed step (`DagsterExecutionInterruptedError`) and
goes on with the run: a command that ran the next shard and published would ignore the operator. Here a
signal raises `Interrupted` wherever the command is, and one that Dagster took is still seen: Python writes
the number of every signal it receives to a wakeup pipe, which `raise_if_signalled` reads between steps.
Every write is atomic (a temporary name renamed into place), so an interrupted command leaves nothing
half-written under a final name, and the release, written last, is never published.

Two kinds of work do not return to Python often enough for a signal to stop them at once: a DuckDB query (its
Python client sees a signal only when the query ends) and worker processes. `call` runs the first in a helper
thread and stops it on a signal; `ignore_in_worker` leaves stopping the second to the command.
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
    its next `raise_if_signalled`: for code that runs Dagster steps (which take the signal themselves), or
    pyarrow reads of Python file objects (which turn the exception into "I/O operation on closed file", a
    damaged file to the caller), and whose own work between checks is short, so that no library call is left
    in the middle by an exception."""
    if threading.current_thread() is not threading.main_thread() or not _pipe:
        yield
        return
    previous = {s: signal.signal(s, _mark) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def call(work, stop):
    """Return `work()`, run in a helper thread while this one waits: a signal stops the wait at once, then
    `stop()` (a DuckDB connection's `interrupt`) ends the work, and `Interrupted` goes on once it has ended.
    (Waiting on an Event, not `Thread.join`: a join that a signal interrupts can report a living thread as
    ended.)"""
    if threading.current_thread() is not threading.main_thread() or not _pipe:
        return work()
    outcome: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name="relaion-interruptible", daemon=True).start()
    try:
        while not done.wait(0.1):
            raise_if_signalled()  # a signal that only marked the command (`deferred`)
    except BaseException:
        stop()
        while not done.wait(0.1):
            pass
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def ignore_in_worker() -> None:
    """In a worker process: SIGINT and SIGTERM (Ctrl-C reaches the whole process group) are left to the command,
    which tells its workers to stop, so that no worker prints a traceback or dies in the middle of a write."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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
