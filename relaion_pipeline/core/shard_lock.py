"""One writer per shard at a time: a lock around every stage that writes a shard's files.

Two runs of the same partition at once (a sensor and a manual launch, a retried run that is still alive) would
otherwise delete and rewrite each other's outputs. With a local work location the lock is an advisory file lock
(`fcntl.flock`) on `<work>/locks/<digest of the shard name>.lock`: the second run waits, then redoes the stage on
a consistent state; the lock is released when the process ends, even by SIGKILL. A work location in object
storage has no such lock: run the shard job through Dagster's run queue with one run per partition (see
docs/deployment.md), which serializes runs before they start.

Publishing takes a lock of the release location itself (`publishing`), so that runs from different work
locations are kept apart too: locally a file lock on `<release>/.lock`, on S3 an object `<release>/.lock`
created only if none exists (a conditional write, `If-None-Match: *`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from relaion_pipeline.core import storage

# Why not `filelock`/`fasteners`: locally they take the same `fcntl.flock`, but the release lock must also work
# on S3 (a conditional create, which no lock library offers) with the same semantics: wait with one notice
# naming the holder, then fail naming the lock to remove. One module keeps both kinds, and the waits, alike.


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
    storage.check_writable(work, "--work, RELAION_WORK")  # the first write of a run: a read-only one stops here
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


LOCK_NAME = ".lock"  # in the release location, while a publish holds it


class ReleaseLocked(RuntimeError):
    """Another publish held the release location's lock for longer than the wait allowed."""


@contextlib.contextmanager
def publishing(release: str, timeout: float = 3600.0) -> Iterator[None]:
    """Hold the lock of the release location: one publish at a time, whichever work location it comes from (two
    at once could each read `latest`, and the later one replace a release it never saw). Waits up to `timeout`
    seconds for another publish, then fails naming the lock."""
    if storage.is_local(release):
        with _file_lock(str(release).removeprefix("file://"), timeout):
            yield
    else:
        with _object_lock(release, timeout):
            yield


def _locked_file(path: str, deadline: float) -> int | None:
    """An open descriptor holding the flock of the file `path` (created if needed), which is still the file of that
    name; None where this process may not create it (a read-only location: it cannot publish there either)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise ReleaseLocked(f"{path}: another publish to this release location held it too long") from None
            time.sleep(0.2)
            continue
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not a file the last holder removed on leaving
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def _file_lock(folder: str, timeout: float) -> Iterator[None]:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    path = os.path.join(folder, LOCK_NAME)
    fd = _locked_file(path, time.monotonic() + timeout) if os.path.isdir(folder) else None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still holding it: a waiter that opened it sees it is gone and opens anew
            os.close(fd)


@contextlib.contextmanager
def _object_lock(release: str, timeout: float) -> Iterator[None]:
    """The lock object `<release>/.lock`, created only if none exists. One left by a publish that was killed on
    this machine (its process is gone) is taken over; one from elsewhere is waited for, then named."""
    fs, root = storage.filesystem(release)
    path = f"{root.rstrip('/')}/{LOCK_NAME}"
    bucket, key, _ = fs.split_path(path)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,  # a unique ETag
              "since": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    with storage.reaching(release):
        made = _create(fs, path, holder, time.monotonic() + timeout, release)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=made["ETag"])


def _create(fs, path: str, holder: dict, deadline: float, release: str) -> dict:
    """Create the lock object, once no living holder has it; the store's answer (its ETag)."""
    bucket, key, _ = fs.split_path(path)
    while True:
        try:
            return fs.pipe_file(path, json.dumps(holder).encode(), mode="create")
        except FileExistsError:
            other, etag = _holder(fs, path)
            if other is None:
                continue  # removed meanwhile
            if other.get("token") == holder["token"]:
                return {"ETag": etag}  # ours: a retried request whose first try was stored, its answer lost
            if _dead_here(other):
                with contextlib.suppress(OSError):
                    fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
                continue
            if time.monotonic() > deadline:
                raise ReleaseLocked(
                    f"{storage.join(release, LOCK_NAME)}: another publish to this release location holds it"
                    f" ({other}); if none is running (it was killed on another machine), remove that object and"
                    " run again"
                ) from None
            time.sleep(1.0)


def _holder(fs, path: str) -> tuple[dict | None, str]:
    """What the lock object says about its holder, and its ETag (None when it is gone)."""
    try:
        etag = fs.info(path, refresh=True)["ETag"]
        said = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None, ""
    except ValueError:  # not JSON: a holder that cannot be named, but a holder
        return {}, etag
    return (said if isinstance(said, dict) else {}), etag


def _dead_here(holder: dict) -> bool:
    """True when the lock's holder was a process of this machine that no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
