"""Python's cyclic garbage collector in a worker that imported big libraries.

A Dagster worker imports Dagster, pandas and Great Expectations: millions of objects, which each collection
of the oldest generation traverses again (a third of a 2M-row research-safe check). `freeze` exempts them.
"""

from __future__ import annotations

import atexit
import gc

_FROZEN: set[str] = set()


def freeze(what: str) -> None:
    """Exempt every object that exists now from Python's cyclic garbage collector, once per `what` and
    process: the modules a worker has imported (Dagster, pandas, Great Expectations: millions of objects),
    which each collection of the oldest generation traversed again (a third of a 2M-row research-safe check).
    Objects made later are collected as usual, and every object is still freed by reference counting; at
    exit all are handed back to the collector, so that extension modules see their objects freed."""
    if what not in _FROZEN:
        if not _FROZEN:
            atexit.register(gc.unfreeze)
        _FROZEN.add(what)
        gc.freeze()
