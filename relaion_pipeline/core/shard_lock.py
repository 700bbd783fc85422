"""One writer per shard at a time: a lock around every stage that writes a shard's files.

Two runs of the same partition at once (a sensor and a manual launch, a retried run that is still alive) would
otherwise delete and rewrite each other's outputs. With a local work location the lock is an advisory file lock
(`fcntl.flock`) on `<work>/locks/<digest of the shard name>.lock`: the second run waits, then redoes the stage on
a consistent state; the lock is released when the process ends, even by SIGKILL. A work location in object
storage has no such lock: run the shard job through Dagster's run queue with one run per partition (see
docs/deployment.md), which serializes runs before they start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator

from relaion_pipeline.core import storage


class LockTimeout(TimeoutError):
    """Another process held the shard's lock for longer than the wait allowed."""


@contextlib.contextmanager
def holding(work: str, name: str, timeout: float = 3600.0, waiting=None) -> Iterator[None]:
    """Hold the lock of shard `name` under `work` (waits up to `timeout` seconds; `waiting(message)` is told once
    when another process holds it)."""
    if not storage.is_local(work):
        yield
        return
    folder = os.path.join(str(work).removeprefix("file://"), "locks")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(name.encode("utf-8")).hexdigest()[:24] + ".lock")
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and waiting is not None:
                    waiting(f"shard {name!r}: another run is writing it; waiting for its lock ({path})")
                    told = True
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"shard {name!r}: its lock {path} was held for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunLocked(RuntimeError):
    """Another `relaion run` is using the work location."""


@contextlib.contextmanager
def only_run(work: str) -> Iterator[None]:
    """One `relaion run` per work location at a time: a second one fails at once, naming the location. Two at
    once would interleave their stages and publish files of one with the manifest of the other (a release
    whose research-safe was cut at another run's threshold)."""
    if not storage.is_local(work):
        yield
        return
    folder = os.path.join(str(work).removeprefix("file://"), "locks")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "run.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{work}: another relaion run is using this work location (lock {path}); wait for it to finish,"
                " or give this run a work location of its own (--work)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
