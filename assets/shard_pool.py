"""Shards at once (`relaion run --workers N`): N worker processes, each running one shard's job at a time.

A shard's stages are partly Python (the GIL), so shards run side by side in processes, not threads. Workers are
forked from multiprocessing's fork server, not from the parent (which holds DuckDB's, numba's and Dagster's
threads by then): the server imports the pipeline once, before any thread starts, so a worker starts in
milliseconds instead of importing Dagster and Great Expectations again (~8 s of CPU each). The parent hands
each worker one shard at a time over a pipe and alone prints: lines never interleave. A worker that dies fails
its shard alone, and a new one takes the next shard.

Signals: the server, and so every worker, starts with SIGINT and SIGTERM blocked; a worker unblocks them once
it handles them, in a process group of its own, so that only the parent hears the operator. On a signal the parent sends the same signal to every worker (whose Dagster step
stops as a run in one process would), waits until every worker has ended, and raises `Interrupted`: the
caller publishes nothing. A worker that was signalled by someone else reports it, and stops the run the same
way (fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from relaion_pipeline.core import interrupts, progress

GRACE = 60.0  # seconds a signalled worker has to end its step before it is killed


def run(
    job: Callable[[str], object],
    names: list[str],
    workers: int,
    done: Callable[[str, object, str], None],
    preload: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> None:
    """`job(name)` for every name, in `workers` processes at once; `done(name, result, error)` in this process
    as each ends: `error` is empty unless the job raised or its worker died. `job` is pickled to each worker
    once and called there for each of its shards. The fork server imports the modules `preload` and starts
    with `env` added to the environment, once per process: later calls share it."""
    pending = list(names)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    with _environment(env or {}), _signals_blocked():  # both inherited by every worker forked from it
        multiprocessing.forkserver.ensure_running()
    pool = [_Worker(context, job) for _ in range(min(workers, len(pending)))]
    try:
        while pending or any(w.shard is not None for w in pool):
            for worker in pool:
                if worker.shard is None and pending:
                    worker.shard = pending.pop(0)
                    with contextlib.suppress(OSError):  # a worker that died idle: its end is seen below
                        worker.connection.send(worker.shard)
            ready = wait([c for w in pool for c in (w.connection, w.process.sentinel)], timeout=0.2)
            interrupts.raise_if_signalled()
            for worker in [w for w in pool if w.connection in ready or w.process.sentinel in ready]:
                answer = worker.answer()
                if answer[0] == "progress":  # a line of its long work: the parent alone prints
                    progress.log.info(answer[1])
                    continue
                name, worker.shard = worker.shard, None
                if answer[0] == "interrupted":
                    raise interrupts.Interrupted(answer[1])
                if name is not None:
                    done(name, *answer[1:])
                if answer[0] == "died":
                    pool.remove(worker)
                    if pending:
                        pool.append(_Worker(context, job))
    except BaseException as error:
        _stop(pool, error.signum if isinstance(error, interrupts.Interrupted) else signal.SIGTERM)
        raise
    for worker in pool:
        worker.close()


class _Worker:
    """A worker process and the parent's end of its pipe."""

    def __init__(self, context, job):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, job), name="relaion-shard-worker", daemon=True)
        self.process.start()
        theirs.close()
        self.shard: str | None = None  # the shard it was handed and has not answered for

    def answer(self) -> tuple:
        """("done", result, ""), ("done", None, error), ("interrupted", signum), ("died", None, why), or
        ("progress", line) while the shard goes on."""
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            self.process.join()
            code = self.process.exitcode
            why = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            return "died", None, f"its worker process ended without finishing it ({why})"

    def close(self) -> None:
        self.connection.close()  # the worker reads the end of its input and leaves
        self.process.join()


def _stop(workers: list[_Worker], signum: int) -> None:
    """Send `signum` to every worker, wait for all to end (killing those still there after `GRACE` seconds)."""
    for worker in workers:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signum)
    deadline = time.monotonic() + GRACE
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()


def _serve(connection: Connection, job: Callable[[str], object]) -> None:
    """A worker: run `job` for each shard name received until the pipe closes, answering for each."""
    os.setpgrp()  # the terminal's Ctrl-C reaches the parent alone, which tells each worker once
    progress.log.addHandler(_Relay(connection))  # its progress lines, printed by the parent
    progress.log.setLevel(logging.INFO)
    with interrupts.interruptible(), interrupts.deferred():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.SIGNALS)  # one that came meanwhile arrives now
        while True:
            try:
                interrupts.raise_if_signalled()
                name = connection.recv()
            except EOFError:
                return
            except interrupts.Interrupted as interrupted:
                connection.send(("interrupted", interrupted.signum))
                return
            try:
                answer = ("done", job(name), "")
                interrupts.raise_if_signalled()
            except interrupts.Interrupted as interrupted:
                answer = ("interrupted", interrupted.signum)
            except Exception as error:  # noqa: BLE001  (the shard fails, named; the others go on)
                lines = traceback.format_exception_only(error)
                answer = ("done", None, lines[-1].strip())
            connection.send(answer)
            if answer[0] == "interrupted":
                return


class _Relay(logging.Handler):
    """A worker's progress lines (`core.progress`), sent to the parent over the worker's pipe."""

    def __init__(self, connection: Connection):
        super().__init__(logging.INFO)
        self.connection = connection

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):  # a parent gone: the line has no one to reach
            self.connection.send(("progress", record.getMessage()))


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """`env` added to this process's environment while the fork server starts (it inherits it through exec)."""
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signals_blocked():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
