"""The two published variants of a shard, written with exactly the input's columns, types and row order.

research = the shard minus every removed row; research-safe = research minus rows whose safety score is above
the safe threshold. Both stream the parquet file batch by batch, so memory does not grow with the shard.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relaion_pipeline import schemas, shards, storage
from relaion_pipeline.settings import Settings

BATCH_ROWS = 65_536
ROW_GROUP_ROWS = 500_000
COMPARE_ROWS = 262_144  # rows of the key columns compared at a time by `is_filtered_copy`


@dataclass(frozen=True)
class VariantStats:
    rows_in: int
    rows_out: int
    bytes: int
    sha256: str


def filter_shard(
    source: str,
    destination: str,
    keep: Callable[[pa.RecordBatch, int], pa.Array],
    dropped: list[np.ndarray] | None = None,
) -> VariantStats:
    """Copy the rows of `source` for which `keep(batch, first_row_number)` is true to `destination`.

    The output has the source's arrow schema (with its metadata) and row order; it appears under its final
    name only when complete. When `dropped` is a list, the positions of the rows left out are appended to it.
    """
    parquet = shards.open_parquet(source, streaming=True)
    schema = parquet.schema_arrow
    rows_in = rows_out = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with storage.AtomicPath(destination) as tmp, ThreadPoolExecutor(max_workers=1) as encoder:
        fs, inner = storage.filesystem(tmp)
        with pq.ParquetWriter(inner, schema, filesystem=fs, compression=storage.PARQUET_COMPRESSION) as writer:
            writing = None  # a row group being encoded (pyarrow frees the GIL) while the next one is read

            def write(batches: list[pa.RecordBatch]) -> None:
                nonlocal writing
                if writing is not None:
                    writing.result()
                writing = encoder.submit(writer.write_table, pa.Table.from_batches(batches, schema=schema))

            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=True):
                mask = keep(batch, rows_in)
                if dropped is not None:
                    dropped.append(np.flatnonzero(~mask.to_numpy(zero_copy_only=False)) + rows_in)
                kept = batch.filter(mask)
                rows_in += batch.num_rows
                if kept.num_rows:
                    pending.append(kept)
                    pending_rows += kept.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    write(pending)
                    rows_out += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                write(pending)
                rows_out += pending_rows
            if writing is not None:
                writing.result()
    size, digest = storage.size_and_sha256(destination)
    return VariantStats(rows_in=rows_in, rows_out=rows_out, bytes=size, sha256=digest)


def write_research(shard_path: str, removed_row_numbers: np.ndarray, destination: str) -> VariantStats:
    """research: every row of the shard except the given (0-based) row numbers."""
    removed = np.unique(np.asarray(removed_row_numbers, dtype=np.int64))

    def keep(batch: pa.RecordBatch, first: int) -> pa.Array:
        numbers = np.arange(first, first + batch.num_rows, dtype=np.int64)
        return pa.array(~np.isin(numbers, removed, assume_unique=True))

    return filter_shard(shard_path, destination, keep)


def shard_rows(positions: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The shard's row numbers of the rows at `positions` of research, given the sorted unique row numbers
    `removed` from it. Memory grows with those two arrays, not with the shard: the row `removed[i]` has
    `removed[i] - i` research rows before it, so position p is row p + #{i: removed[i] - i <= p}."""
    positions = np.asarray(positions, dtype=np.int64)
    before = removed.astype(np.int64) - np.arange(removed.size, dtype=np.int64)
    return positions + np.searchsorted(before, positions, side="right")


def safe_keep_mask(batch: pa.RecordBatch, roles: schemas.Roles, settings: Settings) -> pa.Array:
    """True for rows that research-safe keeps: score at or below the safe threshold (see Settings)."""
    keep_missing = settings.missing_score == "keep"
    if roles.punsafe is not None:
        unsafe = pc.greater(batch.column(roles.punsafe), settings.safe_threshold)
    elif roles.nsfw is not None:
        tags = batch.column(roles.nsfw)
        unsafe = pc.is_in(tags, value_set=pa.array(settings.unsafe_tag_values, tags.type))
        unsafe = pc.if_else(pc.is_null(tags), pa.scalar(None, pa.bool_()), unsafe)
    else:
        return pa.array(np.full(batch.num_rows, keep_missing))
    return pc.fill_null(pc.invert(unsafe), keep_missing)


def write_research_safe(
    research_path: str,
    roles: schemas.Roles,
    settings: Settings,
    destination: str,
    dropped: list[np.ndarray] | None = None,
) -> VariantStats:
    """research-safe: the rows of research whose safety score is at or below the safe threshold."""
    return filter_shard(
        research_path, destination, lambda batch, _first: safe_keep_mask(batch, roles, settings), dropped
    )


def _kept_batches(path: str, columns: list[str], dropped: np.ndarray):
    """The given columns of the parquet file at `path`, batch by batch, without the rows at the sorted
    positions `dropped`."""
    first = 0
    for batch in shards.open_parquet(path, streaming=True).iter_batches(batch_size=COMPARE_ROWS, columns=columns):
        n = batch.num_rows
        lo, hi = np.searchsorted(dropped, [first, first + n])
        if hi > lo:
            keep = np.ones(n, dtype=bool)
            keep[dropped[lo:hi] - first] = False
            batch = batch.filter(pa.array(keep))
        first += n
        yield batch


def _same(left: pa.Array, right: pa.Array) -> bool:
    """Element-wise equality, a null equal to a null only (and NaN to NaN); False for columns of two types."""
    if left.type != right.type:
        return False
    equal = pc.fill_null(pc.equal(left, right), False)
    if pa.types.is_floating(left.type):
        equal = pc.or_(equal, pc.and_(pc.is_nan(left), pc.is_nan(right)))
    equal = pc.if_else(pc.is_null(left), pc.is_null(right), equal)
    return pc.all(equal).as_py() is not False  # True for no rows


def is_filtered_copy(subset: str, superset: str, columns: list[str], dropped: np.ndarray) -> bool:
    """Whether the file `subset` holds exactly the rows of `superset` but those at the sorted positions
    `dropped`, in the same order, on `columns`: how a variant is made, checked by streaming both files side
    by side in bounded memory (a join of every row key grows with the shard). False says only that it is
    not such a copy; which rows differ is for a join to tell."""
    dropped = np.sort(np.asarray(dropped, dtype=np.int64))  # numpy's unique hashes: 0.5 s for 1M positions
    dropped = dropped[np.r_[True, dropped[1:] != dropped[:-1]]] if dropped.size else dropped
    left = _kept_batches(superset, columns, dropped)
    right = shards.open_parquet(subset, streaming=True).iter_batches(COMPARE_ROWS, columns=columns)
    a, b = next(left, None), next(right, None)
    while True:
        while a is not None and not a.num_rows:
            a = next(left, None)
        while b is not None and not b.num_rows:
            b = next(right, None)
        if a is None or b is None:
            return a is None and b is None  # else one file has rows the other has not
        n = min(a.num_rows, b.num_rows)
        if not all(_same(a.column(c).slice(0, n), b.column(c).slice(0, n)) for c in columns):
            return False
        a, b = a.slice(n), b.slice(n)
