"""The two published variants of a shard, written with exactly the input's columns, types and row order.

research = the shard minus every removed row; research-safe = research minus rows whose safety score is above
the safe threshold. Both stream the parquet file batch by batch, so memory does not grow with the shard.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relaion_pipeline.core import progress, schemas, shards, storage
from relaion_pipeline.core.settings import Settings

BATCH_ROWS = 65_536
ROW_GROUP_ROWS = 500_000
COMPARE_ROWS = 262_144  # rows of the key columns compared at a time by `is_filtered_copy`


@dataclass(frozen=True)
class VariantStats:
    rows_in: int
    rows_out: int
    bytes: int
    sha256: str


class _Digesting:
    """A binary file being written, its size and sha256 taken from the bytes on their way (the file is not
    read again to digest it)."""

    def __init__(self, handle):
        self.handle, self.size, self.digest = handle, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.handle.flush()

    @property
    def closed(self) -> bool:
        return self.handle.closed


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The parquet columns (leaf paths) of `schema` that are dictionary-encoded when written: all but the
    floating-point ones. Scores and similarities have nearly as many distinct values as rows, so each page's
    dictionary fills up and falls back to plain values after the work of building it (a fifth of encoding a
    LAION shard's row group, and larger pages)."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    columns = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return [c.path for c in columns if c.physical_type not in ("FLOAT", "DOUBLE")]


class _Output:
    """One variant being written: its rows go into row groups of exactly ROW_GROUP_ROWS (the last one fewer),
    each encoded on a thread of its own (pyarrow frees the GIL) while the next rows are read. It appears
    under its final name only when complete. Its bytes follow from its rows and the batches they come in
    (pyarrow cuts pages within each batch): the same batches give the same file. Without a destination, the
    rows are only counted."""

    def __init__(self, destination: str | None, schema: pa.Schema):
        self.destination, self.schema, self.rows = destination, schema, 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writing = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Output:
        if self.destination is None:
            return self
        tmp = self._stack.enter_context(storage.AtomicPath(self.destination))
        fs, inner = storage.filesystem(tmp)
        self._file = _Digesting(self._stack.enter_context(fs.open(inner, "wb")))
        options = {"compression": storage.PARQUET_COMPRESSION, "use_dictionary": dictionary_columns(self.schema)}
        self._writer = self._stack.enter_context(pq.ParquetWriter(self._file, self.schema, **options))
        self._encoder = self._stack.enter_context(ThreadPoolExecutor(max_workers=1))
        return self

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.rows += batch.num_rows
        if self.destination is None:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            while table.num_rows >= ROW_GROUP_ROWS:
                self._encode(table.slice(0, ROW_GROUP_ROWS))
                table = table.slice(ROW_GROUP_ROWS)
            self._pending, self._pending_rows = table.to_batches(), table.num_rows

    def _encode(self, table: pa.Table) -> None:
        if self._writing is not None:
            self._writing.result()
        self._writing = self._encoder.submit(self._writer.write_table, table)

    def __exit__(self, *exc) -> bool:
        if exc[0] is None:
            try:
                if self._pending_rows:
                    self._encode(pa.Table.from_batches(self._pending, schema=self.schema))
                if self._writing is not None:
                    self._writing.result()
            except BaseException as error:
                if not self._stack.__exit__(type(error), error, error.__traceback__):
                    raise
                return False
        return self._stack.__exit__(*exc)

    def stats(self, rows_in: int) -> VariantStats | None:
        if self.destination is None:
            return None
        return VariantStats(
            rows_in=rows_in, rows_out=self.rows, bytes=self._file.size, sha256=self._file.digest.hexdigest()
        )


Keep = Callable[[pa.RecordBatch, int], pa.Array]


def filter_shard(
    source: str,
    destination: str | None,
    keep: Keep,
    then: tuple[str, Keep, list[np.ndarray] | None] | None = None,
) -> VariantStats | tuple[VariantStats, VariantStats]:
    """Copy the rows of `source` for which `keep(batch, first_row_number)` is true to `destination`.

    The output has the source's arrow schema (with its metadata) and row order; it appears under its final
    name only when complete. With `then` = (destination, keep, dropped), a second file of the rows the first keeps is written in the
    same pass (`keep(kept batch, its first row's position in the first file)`, and the source positions of the
    rows it leaves out appended to its `dropped`): both files' stats are returned (None for a first file
    without a destination: its rows are only passed on). Its progress lines are named by the caller's
    `progress.named`.
    """
    parquet = shards.open_parquet(source, streaming=True)
    schema = parquet.schema_arrow
    rows_in = 0
    tracker = progress.Progress(progress.name("variants"), parquet.metadata.num_rows, "rows")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(_Output(destination, schema))
        second = stack.enter_context(_Output(then[0], schema)) if then is not None else None
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=True):
            mask = keep(batch, rows_in)
            kept = batch.filter(mask)
            if second is not None:
                then_mask = then[1](kept, first.rows)
                if then[2] is not None:
                    kept_rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + rows_in
                    then[2].append(kept_rows[~then_mask.to_numpy(zero_copy_only=False)])
                second.add(kept.filter(then_mask))
            first.add(kept)
            rows_in += batch.num_rows
            tracker.update(rows_in)
    tracker.finish()
    if second is None:
        return first.stats(rows_in)
    return first.stats(rows_in), second.stats(first.rows)


def write_research(
    shard_path: str,
    removed_row_numbers: np.ndarray,
    destination: str | None,
    safe: tuple[schemas.Roles, Settings, str] | None = None,
) -> VariantStats | tuple[VariantStats | None, VariantStats, np.ndarray]:
    """research: every row of the shard except the given (0-based) row numbers. With `safe` = (roles,
    settings, destination), research-safe is written in the same pass (two encoders; the shard is read once
    for both), and the shard's row numbers of the unsafe rows it leaves out are returned; `destination`
    None writes research-safe alone."""
    removed = np.unique(np.asarray(removed_row_numbers, dtype=np.int64))

    def keep(batch: pa.RecordBatch, first: int) -> pa.Array:
        numbers = np.arange(first, first + batch.num_rows, dtype=np.int64)
        return pa.array(~np.isin(numbers, removed, assume_unique=True))

    if safe is None:
        return filter_shard(shard_path, destination, keep)
    roles, settings, safe_destination = safe
    unsafe: list[np.ndarray] = []
    then = (safe_destination, lambda batch, _first: safe_keep_mask(batch, roles, settings), unsafe)
    research, research_safe = filter_shard(shard_path, destination, keep, then=then)
    return research, research_safe, np.concatenate(unsafe) if unsafe else np.zeros(0, np.int64)


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
    shard_path: str, removed_row_numbers: np.ndarray, roles: schemas.Roles, settings: Settings, destination: str
) -> tuple[VariantStats, np.ndarray]:
    """research-safe: the shard's rows that research keeps (all but the removed row numbers) and whose safety
    score is at or below the safe threshold; and the shard's row numbers of the unsafe rows it leaves out.
    Written from the shard's batches as research's own pass writes it (`write_research`), so both give the
    same bytes."""
    _, safe, unsafe = write_research(shard_path, removed_row_numbers, None, (roles, settings, destination))
    return safe, unsafe


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
