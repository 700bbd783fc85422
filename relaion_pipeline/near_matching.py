"""PDQ near matches of one shard: its sidecar's PDQ hashes against the list's pdq entries.

DuckDB streams the sidecar rows that belong to the shard (with a well-formed hash whose quality is 50 or more,
or unknown: no quality column or a null one) in batches; the compiled multi-index (`pdq_index`) finds every
entry within its source's distance. The result has the removals table's columns, one row per (row, entry),
with the Hamming distance; never a URL or caption. Memory: the list's index (352 bytes an entry) plus a batch.
"""

from __future__ import annotations

import logging
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relaion_pipeline import pdq, storage
from relaion_pipeline.pdq_index import PdqIndex
from relaion_pipeline.schemas import sql_string

BATCH_ROWS = 262_144
log = logging.getLogger(__name__)


_last: dict[tuple, tuple[PdqIndex, pa.Table]] = {}  # the index of the list file matched last


def list_index(con: duckdb.DuckDBPyConnection, blocklist_path: str) -> tuple[PdqIndex, pa.Table]:
    """The multi-index of a merged list's pdq entries, and those entries (value, source, category, distance).
    The last one built is kept, so the shards of one run share it (rebuilt if the file is not the same)."""
    fs, path = storage.filesystem(blocklist_path)
    info = fs.info(path)
    key = (blocklist_path, info.get("size"), str(info.get("mtime") or info.get("LastModified")))
    if key not in _last:
        entries = con.sql(
            f"SELECT value, source, category, distance FROM read_parquet({sql_string(blocklist_path)}) "
            "WHERE kind = 'pdq' ORDER BY value, source, category"
        ).to_arrow_table()
        _last.clear()
        _last[key] = (
            PdqIndex.build(entries.column("value").to_pylist(), entries.column("distance").to_numpy()),
            entries,
        )
    return _last[key]


def shard_matches(con: duckdb.DuckDBPyConnection, inputs) -> pa.Table:
    """Removals rows (row_number, row_key, kind, source, category, hash, match, distance) of the shard's PDQ
    near matches; `inputs` is the shard's `matching.MatchInputs`."""
    started = time.perf_counter()
    index, entries = list_index(con, inputs.blocklist_path)
    searched = 0
    quality = f"c.pdq_quality >= {pdq.MIN_QUALITY}" if "pdq_quality" in inputs.sidecar_columns else "true"
    reader = con.sql(
        f"""WITH src AS (
            SELECT file_row_number AS row_number, {inputs.roles.key_sql(inputs.shard_name)} AS row_key
            FROM read_parquet({sql_string(inputs.shard_path)}, file_row_number = true)
        )
        SELECT row_number, row_key, {pdq.words_sql("pdq")} FROM (
            SELECT s.row_number, s.row_key, lower(CAST(c.pdq AS VARCHAR)) AS pdq
            FROM read_parquet({sql_string(inputs.sidecar_path)}) c JOIN src s ON CAST(c.key AS VARCHAR) = s.row_key
            WHERE regexp_full_match(lower(CAST(c.pdq AS VARCHAR)), '[0-9a-f]{{64}}') AND coalesce({quality}, true)
        )"""
    ).arrow(BATCH_ROWS)
    found = []
    for batch in reader:
        words = np.stack([batch.column(f"h{w}").to_numpy() for w in range(4)], axis=1)
        rows, hits, distances = index.search(words)
        searched += len(words)
        if rows.size:
            found.append(
                pa.table(
                    {
                        "row_number": pc.take(batch.column("row_number"), pa.array(rows)),
                        "row_key": pc.take(batch.column("row_key"), pa.array(rows)),
                        "entry": pa.array(hits, pa.int64()),
                        "distance": pa.array(distances, pa.int16()),
                    }
                )
            )
    log.info(
        f"{inputs.shard_name}: {searched:,} PDQ hashes near-matched against {len(entries):,} entries"
        f" in {time.perf_counter() - started:.1f} s"
    )
    if not found:
        return _empty()
    matched = pa.concat_tables(found)
    entry = pa.array(matched.column("entry"))
    return pa.table(
        {
            "row_number": matched.column("row_number").cast(pa.int64()),
            "row_key": matched.column("row_key").cast(pa.string()),
            "kind": pa.array(["pdq"] * matched.num_rows, pa.string()),
            "source": pc.take(entries.column("source"), entry),
            "category": pc.take(entries.column("category"), entry),
            "hash": pc.take(entries.column("value"), entry),
            "match": pa.array(["image-near"] * matched.num_rows, pa.string()),
            "distance": matched.column("distance"),
        }
    )


def _empty() -> pa.Table:
    return pa.table(
        {
            "row_number": pa.array([], pa.int64()),
            "row_key": pa.array([], pa.string()),
            "kind": pa.array([], pa.string()),
            "source": pa.array([], pa.string()),
            "category": pa.array([], pa.string()),
            "hash": pa.array([], pa.string()),
            "match": pa.array([], pa.string()),
            "distance": pa.array([], pa.int16()),
        }
    )
