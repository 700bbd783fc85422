"""The LAION hashes of the rows of a shard that research-safe leaves out (matched a list, the keyword rule, or
scored unsafe): a shard's part of a release's removal list (`publishing.report.removal_list`).

Computed once per shard when its research-safe is written, in the partitioned stage, and kept in the cache
while the shard, its removals and its unsafe rows are the files they were: a release of thousands of shards
gathers them instead of reading every shard again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from relaion_pipeline.core import cache, row_hashes, shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages.work import Work


def keys(settings: Settings, name: str) -> np.ndarray:
    """The distinct LAION hashes (int64, sorted) of the shard's rows left out of research-safe."""
    work = Work(settings.work)
    shard = shards.resolve(settings.shards, name)
    depends = {
        "input": cache.fingerprint(shard.path),
        "removals": cache.sha256(settings.work, work.removals(name))[1],
        "unsafe_rows": cache.sha256(settings.work, work.unsafe_rows(name))[1],
    }

    def compute() -> pa.Table:
        unsafe = storage.read_table(work.unsafe_rows(name), columns=["row_number"]).column("row_number").to_numpy()
        rows = np.union1d(work.removed_rows(name), unsafe)
        return pa.table({"hash": pa.array(np.unique(row_hashes.of_rows(shard.path, rows)), pa.int64())})

    table = cache.table(settings.work, name, cache.REMOVAL_KEYS, depends, compute)
    return table.column("hash").to_numpy()
