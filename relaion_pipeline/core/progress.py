"""Progress of long work inside a stage (the index of an 18M-row shard, a release of thousands of shards): a
line at most every `EVERY` seconds saying how far it is, through the logger `relaion_pipeline.progress`.

`relaion run` prints these lines (`cli`); the Dagster assets forward them to the run's log while they run
(`assets.metadata.progress_to`), so the UI shows them too. Work that ends before `EVERY` seconds says nothing:
a line only where someone would wonder whether anything is happening. A line never names a row's URL or
caption: only what the work is (a shard's name, a stage) and counts.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time

log = logging.getLogger("relaion_pipeline.progress")
EVERY = 10.0  # seconds between two lines of one piece of work (the setting `progress_seconds` sets it)
_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("relaion_progress_name", default="")


@contextlib.contextmanager
def named(what: str):
    """Name the progress lines of the work done inside (`name`), for code that does not know whose it is."""
    token = _NAME.set(what)
    try:
        yield
    finally:
        _NAME.reset(token)


def name(default: str) -> str:
    """The name `named` gives the work being done, or `default`."""
    return _NAME.get() or default


@contextlib.contextmanager
def to(handler: logging.Handler, seconds: float):
    """While inside: progress lines go to `handler` (the CLI's output, a Dagster run's log), one every `seconds`
    at most for each piece of work; the logger's level and interval are as they were afterwards."""
    global EVERY
    previous = log.level, EVERY
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    EVERY = seconds
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        EVERY = previous[1]


class Progress:
    """How far `what` is through `total` `unit`s; `update(done)` as it goes, `finish()` at its end."""

    def __init__(self, what: str, total: int, unit: str):
        self.what, self.total, self.unit = what, total, unit
        self.started = self.last = time.monotonic()
        self.said = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < EVERY:
            return
        self.last, self.said = now, True
        elapsed = now - self.started
        share = done / self.total if self.total else 1.0
        left = f", about {elapsed / share - elapsed:,.0f} s left" if 0 < share < 1 else ""
        log.info(f"{self.what}: {done:,} of {self.total:,} {self.unit} ({share:.0%}, {elapsed:,.0f} s{left})")

    def finish(self) -> None:
        """The closing line, for work that said how far it was on its way."""
        if self.said:
            elapsed = time.monotonic() - self.started
            log.info(f"{self.what}: all {self.total:,} {self.unit} done in {elapsed:,.0f} s")
