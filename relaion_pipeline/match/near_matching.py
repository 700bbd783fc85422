"""PDQ near matches of one shard: its sidecar's PDQ hashes against the list's pdq entries.

DuckDB streams the sidecar's hashes (64 characters, quality 50 or more or unknown: no quality column or a
null one) in batches; a compiled parser keeps those of hex digits, the compiled multi-index (`pdq_index`)
finds every entry within its source's distance, and the hits whose key is a row key of the shard are kept.
The result has the removals table's columns, one row per (row, entry), with the Hamming distance; never a URL
or caption. Memory: the list's index (384 bytes an entry) plus a batch.
"""

from __future__ import annotations

import logging
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relaion_pipeline.core import cache, schemas, storage
from relaion_pipeline.core.schemas import sql_string
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import PDQ
from relaion_pipeline.match.pdq_index import PdqIndex, hex_words

BATCH_ROWS = 262_144
NEAR_SCHEMA = pa.schema(
    [("row_number", pa.int64()), ("row_key", pa.string()), ("entry", pa.int64()), ("distance", pa.int16())]
)
log = logging.getLogger(__name__)


_last: dict[str, tuple[PdqIndex, pa.Table]] = {}  # the index of the list file matched last


def list_index(con: duckdb.DuckDBPyConnection, blocklist_path: str) -> tuple[PdqIndex, pa.Table]:
    """The multi-index of a merged list's pdq entries, and those entries (value, source, category, distance).
    The last one built is kept, so the shards of one run share it: a list file is named by its content's
    digest (`blocklist-<version>.parquet`), so its path says what it holds."""
    if blocklist_path not in _last:
        entries = con.sql(
            f"SELECT value, source, category, distance FROM read_parquet({storage.duckdb_path(blocklist_path)}) "
            f"WHERE kind = {PDQ.sql} ORDER BY value, source, category"
        ).to_arrow_table()
        _last.clear()
        _last[blocklist_path] = (
            PdqIndex.build(entries.column("value").to_pylist(), entries.column("distance").to_numpy()),
            entries,
        )
    return _last[blocklist_path]


def _sidecar_sql(inputs, stride: int = 1, start: int = 0) -> str:
    """SQL: row_key and pdq of the sidecar's hashes that have 64 characters and are not of low quality
    (`pdq.low_quality_sql`: a quality of 50 or more, none, or one outside 0-100); with a `stride`, of every stride-th row from `start` only."""
    quality = f"NOT {pdq.low_quality_sql()}" if "pdq_quality" in inputs.sidecar_columns else "true"
    drawn = f"file_row_number % {int(stride)} = {int(start) % int(stride)} AND " if stride > 1 else ""
    return f"""
        SELECT CAST(key AS VARCHAR) AS row_key, CAST(pdq AS VARCHAR) AS pdq
        FROM read_parquet({storage.duckdb_path(inputs.sidecar_path)}, file_row_number = {"true" if stride > 1 else "false"})
        WHERE {drawn}length(CAST(pdq AS VARCHAR)) = 64 AND coalesce({quality}, true)"""


def _shard_keys_sql(inputs) -> str:
    return (
        f"SELECT file_row_number AS row_number, {inputs.roles.key_sql(inputs.shard_name)} AS row_key "
        f"FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)"
    )


def sidecar_hashes_sql(inputs, sample: int, seed: int = 0, sidecar_rows: int | None = None) -> str:
    """SQL: row_number, row_key and pdq of a repeatable sample of up to `sample` of the shard's PDQ hashes that
    can match (`_sidecar_sql`, and their key a row key of the shard; `matchable` keeps those of hex digits),
    drawn before they are joined with the shard: the research audit's. Every k-th of the sidecar's
    `sidecar_rows` is drawn from a seeded start, about twice `sample`, in one parallel scan (a reservoir
    sample took one thread 0.7 s more for 17M rows); of those that can match, `sample` are kept by a seeded
    hash of their row number, so they still spread over the whole file."""
    stride = max(max(int(sidecar_rows or 0), 1) // max(2 * int(sample), 1), 1)
    return f"""
        SELECT row_number, row_key, pdq FROM (
            SELECT s.row_number, s.row_key, c.pdq FROM ({_sidecar_sql(inputs, stride, seed)}) c
            JOIN ({_shard_keys_sql(inputs)}) s ON c.row_key = s.row_key
            ORDER BY hash(s.row_number, {int(seed)}), s.row_number LIMIT {int(sample)}
        ) ORDER BY row_number"""


def matchable(batch: pa.RecordBatch | pa.Table) -> tuple[pa.RecordBatch | pa.Table, np.ndarray]:
    """The rows of a batch of sidecar hashes whose hash is 64 hex digits, and their (n, 4) words: the rest of
    the rule, applied by a compiled parser rather than a regular expression in SQL (0.7 s less on 1.5M)."""
    words, valid = hex_words(batch.column(PDQ.sidecar_column))
    if valid.all():
        return batch, words
    return batch.filter(pa.array(valid)), words[valid]


def near(con: duckdb.DuckDBPyConnection, inputs, index: PdqIndex) -> tuple[pa.Table, int]:
    """Every (row_number, row_key, entry, distance) of a sidecar hash of the shard within an entry's distance,
    and how many hashes were compared. The rule for which hashes can match, shared by matching, list changes
    and (on a sample) the audit: quality 50+ or unknown, 64 hex digits, the key a row key of the shard.

    The sidecar alone is streamed (no join: memory stays flat however large the shard); only the hits are
    joined with the shard's row keys, one row for each row that has the key."""
    searched = 0
    found = []
    for batch in con.sql(_sidecar_sql(inputs)).arrow(BATCH_ROWS):
        batch, words = matchable(batch)
        rows, hits, distances = index.search(words)
        searched += len(words)
        if rows.size:
            keys = pc.take(batch.column("row_key"), pa.array(rows))
            found.append(pa.table({"row_key": keys, "entry": hits, "distance": pa.array(distances, pa.int16())}))
    if not found:
        return NEAR_SCHEMA.empty_table(), searched
    con.register("relaion_near", pa.concat_tables(found))
    try:
        matched = con.sql(
            f"SELECT s.row_number, h.row_key, h.entry, h.distance FROM relaion_near h "
            f"JOIN ({_shard_keys_sql(inputs)}) s ON s.row_key = h.row_key ORDER BY s.row_number, h.entry"
        ).to_arrow_table()
    finally:
        con.unregister("relaion_near")
    return matched, searched


def _removal_rows(con: duckdb.DuckDBPyConnection, hits: pa.Table, blocklist_path: str) -> pa.Table:
    """Removals rows (row_number, row_key, kind, source, category, hash, match, distance) of near matches
    (row_number, row_key, value, distance): one per list entry of that value whose distance they are within."""
    if not hits.num_rows:
        return schemas.REMOVALS.empty_table()
    con.register("relaion_hits", hits)
    try:
        return con.sql(
            f"SELECT h.row_number, h.row_key, {PDQ.sql} AS kind, b.source, b.category, b.value AS hash,"
            f" {sql_string(PDQ.label)} AS match, h.distance FROM relaion_hits h JOIN read_parquet({storage.duckdb_path(blocklist_path)}) b"
            f" ON b.kind = {PDQ.sql} AND b.value = h.value AND h.distance <= coalesce(b.distance, {pdq.DEFAULT_DISTANCE})"
        ).to_arrow_table()
    finally:
        con.unregister("relaion_hits")


HITS_SCHEMA = pa.schema(
    [("row_number", pa.int64()), ("row_key", pa.string()), ("value", pa.string()), ("distance", pa.int16())]
)


def _hits(con: duckdb.DuckDBPyConnection, inputs, index: PdqIndex, values: pa.Array) -> tuple[pa.Table, int]:
    """`near`'s matches as (row_number, row_key, value, distance), one per row and distinct value, where
    `values` are the hashes of the index's entries; and how many hashes were compared."""
    matched, searched = near(con, inputs, index)
    if not matched.num_rows:
        return HITS_SCHEMA.empty_table(), searched
    hits = pa.table(
        {
            "row_number": matched.column("row_number").cast(pa.int64()),
            "row_key": matched.column("row_key").cast(pa.string()),
            "value": pc.take(values, pa.array(matched.column("entry"))).cast(pa.string()),
            "distance": matched.column("distance").cast(pa.int16()),
        }
    )
    return hits.group_by(HITS_SCHEMA.names).aggregate([]).select(HITS_SCHEMA.names), searched


def _reach_sql(blocklist_path: str) -> str:
    """SQL: each distinct pdq value of a list with the largest distance any of its entries matches within."""
    return (
        f"SELECT value, max(coalesce(distance, {pdq.DEFAULT_DISTANCE}))::SMALLINT AS reach "
        f"FROM read_parquet({storage.duckdb_path(blocklist_path)}) WHERE kind = {PDQ.sql} GROUP BY value"
    )


def _updated_hits(con: duckdb.DuckDBPyConnection, inputs, old: pa.Table, old_list: str) -> tuple[pa.Table, int, int]:
    """The near matches against the current list from those remembered against `old_list`: a value whose
    reach did not grow keeps its remembered matches within its new reach; only values added or given a
    larger distance are searched, with the shard's hashes, in an index of their own."""
    added = con.sql(
        f"SELECT n.value, n.reach FROM ({_reach_sql(inputs.blocklist_path)}) n "
        f"LEFT JOIN ({_reach_sql(old_list)}) o ON o.value = n.value "
        "WHERE o.value IS NULL OR n.reach > o.reach ORDER BY n.value"
    ).to_arrow_table()
    found, searched = HITS_SCHEMA.empty_table(), 0
    if added.num_rows:
        index = PdqIndex.build(added.column("value").to_pylist(), added.column("reach").to_numpy())
        found, searched = _hits(con, inputs, index, added.column("value"))
    con.register("relaion_old_hits", old.select(HITS_SCHEMA.names).cast(HITS_SCHEMA))
    con.register("relaion_added", added)
    try:
        kept = con.sql(
            f"SELECT h.* FROM relaion_old_hits h JOIN ({_reach_sql(inputs.blocklist_path)}) n "
            "ON n.value = h.value AND h.distance <= n.reach ANTI JOIN relaion_added a ON a.value = h.value"
        ).to_arrow_table()
    finally:
        con.unregister("relaion_old_hits")
        con.unregister("relaion_added")
    return pa.concat_tables([kept.cast(HITS_SCHEMA), found.cast(HITS_SCHEMA)]), added.num_rows, searched


def shard_matches(
    con: duckdb.DuckDBPyConnection, inputs, remember: tuple[str, dict] | None = None
) -> tuple[pa.Table, dict]:
    """Removals rows (row_number, row_key, kind, source, category, hash, match, distance) of the shard's PDQ
    near matches, and how they were found; `inputs` is the shard's `matching.MatchInputs`.

    With `remember` = (work location, depends), the matches (row numbers, list hashes and distances: never a URL
    nor a row key) are kept in the cache (`cache.NEAR_MATCHES`) with the list version, under the key of
    `depends` (what they depend on besides the list: the shard's and sidecar's fingerprints). While the key
    holds and that list version is kept, a new
    version searches only its values that were added or given a larger distance (a list change of a thousand
    entries: ~3 s for an 18M-row shard instead of ~30 s), and the rest come from the file."""
    started = time.perf_counter()
    list_name = inputs.blocklist_path.rstrip("/").rsplit("/", 1)[-1]
    hits = None
    how = {"from_list": None, "entries_searched": 0, "hashes_searched": 0}
    kept = cache.lookup(remember[0], inputs.shard_name, cache.NEAR_MATCHES, remember[1]) if remember else None
    if kept is not None:
        old_list = inputs.blocklist_path[: -len(list_name)] + str(kept.extra.get("list"))
        if storage.exists(old_list):
            old = storage.read_table(cache.path(remember[0], inputs.shard_name, cache.NEAR_MATCHES))
            hits, how["entries_searched"], how["hashes_searched"] = _updated_hits(con, inputs, old, old_list)
            how["from_list"] = kept.extra["list"]
    if hits is None:
        index, entries = list_index(con, inputs.blocklist_path)
        hits, how["hashes_searched"] = _hits(con, inputs, index, entries.column("value"))
        how["entries_searched"] = len(entries)
    if remember is not None:  # kept without row keys (`row_keys`): removals takes each key from the shard
        work, depends = remember
        keyless = hits.cast(HITS_SCHEMA).set_column(1, "row_key", pa.nulls(hits.num_rows, pa.string()))
        storage.write_parquet_atomic(keyless, cache.path(work, inputs.shard_name, cache.NEAR_MATCHES))
        cache.put(work, inputs.shard_name, cache.NEAR_MATCHES, depends, extra={"list": list_name})
    log.info(
        f"{inputs.shard_name}: {how['hashes_searched']:,} PDQ hashes near-matched against {how['entries_searched']:,}"
        f" entries{' (the rest remembered from ' + how['from_list'] + ')' if how['from_list'] else ''}"
        f" in {time.perf_counter() - started:.1f} s"
    )
    return _removal_rows(con, hits, inputs.blocklist_path), how
