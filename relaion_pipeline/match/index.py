"""The per-shard lookup-hash index: what a shard needs to be matched again without re-hashing it.

For every row with a URL, the index holds one entry per lookup expression (`host/path` forms, see
`relaion_pipeline.canonical.urls`) and per host suffix (for domain lists), of each host form (a non-ASCII host's
percent-encoded and IDNA forms, `urls.host_forms`), each as the first 64 bits of its sha256 and md5; rows whose URL has no canonical form get one entry of scope `none`. It never holds a URL, an
expression's text or a caption: only row numbers, scopes and hash prefixes.

The removals stage builds it once per input file (`<work>/index/<shard>.parquet`, recorded in the cache by
`<shard>.parquet.json`, `relaion_pipeline.core.cache`) with the compiled kernels of `lookup_hashes` (without OpenSSL: the SQL of `build_sql`, which
the tests hold the kernels to) and reuses it while the input is unchanged, so a new list version costs one
join of the index with the list instead of canonicalizing and hashing the shard again. A prefix hit only
names a candidate row: removals are confirmed on the candidates' full hashes by the matching query, and the
research check confirms the candidates (kept beside the index by `list_candidates`) with the reference
implementation in Python.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.canonical import lookup_hashes, url_sql, urls
from relaion_pipeline.core import cache, progress, storage
from relaion_pipeline.core.schemas import sql_string
from relaion_pipeline.lists.kinds import DOMAIN as DOMAIN_KIND
from relaion_pipeline.lists.kinds import URL_DERIVED, URL_MD5, URL_SHA256, sql_list
from relaion_pipeline.match import matching

SCOPES = ("url", "path", "host", DOMAIN_KIND.name, "none")  # DOMAIN: the host suffixes that domain entries match
URL, PATH, HOST, DOMAIN, NONE = range(len(SCOPES))
BATCH_ROWS = 262_144  # URLs per batch of the compiled build: ~30 MB of URLs, ~4M entries
SCHEMA = pa.schema([("row_number", pa.uint32()), ("scope", pa.uint8()), ("sha", pa.uint64()), ("md5", pa.uint64())])


def _prefix(hex_sql: str) -> str:
    """SQL: the first 64 bits of a hex digest as UBIGINT."""
    return f"('0x' || left({hex_sql}, 16))::UBIGINT"


def build_sql(inputs: matching.MatchInputs, md5: bool = True, domains: bool = True) -> str:
    """The query whose rows are the index of one shard (see the module docstring); without `md5`, the md5
    column is left null (no list has `url_md5` entries: half the size, a fifth less work); without
    `domains`, there are no entries of scope `domain` (no list has `domain` entries: a fifth fewer)."""
    roles = inputs.roles
    scope = f"CASE e.scope WHEN 'url' THEN {URL} WHEN 'path' THEN {PATH} ELSE {HOST} END"
    return f"""
    WITH src AS (
        SELECT file_row_number AS row_number, NULL::VARCHAR AS row_key, {matching.quote(roles.url)} AS url
        FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)
    ),
    {url_sql.canonical_parts_sql("src")},
    {url_sql.EXPRESSIONS_SQL},
    domains AS (
        SELECT row_number, unnest(list_transform(range(1, len(labels)), lambda i: array_to_string(labels[i:], '.')))
            AS suffix
        FROM (SELECT row_number, string_split(host, '.') AS labels FROM canonical WHERE NOT starts_with(host, '['))
    )
    SELECT e.row_number::UINTEGER AS row_number, ({scope})::UTINYINT AS scope,
           {_prefix("sha256(e.expression)")} AS sha, {_prefix("md5(e.expression)") if md5 else "NULL::UBIGINT"} AS md5
    FROM expressions e
    UNION ALL
    SELECT row_number::UINTEGER, {DOMAIN}::UTINYINT, {_prefix("sha256(suffix)")}, NULL::UBIGINT FROM domains
    WHERE {"true" if domains else "false"}
    UNION ALL
    SELECT s.row_number::UINTEGER, {NONE}::UTINYINT, NULL::UBIGINT, NULL::UBIGINT
    FROM classified s ANTI JOIN canonical c ON c.row_number = s.row_number
    WHERE trim(s.url) <> ''"""


def _write_sql(
    con: duckdb.DuckDBPyConnection,
    inputs: matching.MatchInputs,
    md5: bool,
    domains: bool,
    target: str,
    tracker: progress.Progress | None = None,
) -> None:  # one statement: DuckDB says nothing of how far it is
    options = "FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000, USE_TMP_FILE false"
    con.execute(f"COPY ({build_sql(inputs, md5, domains)}) TO {sql_string(target)} ({options})")


def _general_sql(relation: str) -> str:
    """SQL: row_number, host, path, query of the URLs of `relation` (row_number, url), one row per host form
    (a non-ASCII host's IDNA form is a second row), the parts null for a non-blank URL with no canonical form;
    blank URLs have no row."""
    return f"""
    WITH src AS (SELECT row_number, NULL::VARCHAR AS row_key, url FROM {relation}), {url_sql.canonical_parts_sql("src")}
    SELECT s.row_number, c.host, c.path, c.query
    FROM classified s LEFT JOIN canonical c ON c.row_number = s.row_number
    WHERE c.row_number IS NOT NULL OR trim(s.url) <> ''"""


def _write_compiled(
    con: duckdb.DuckDBPyConnection,
    inputs: matching.MatchInputs,
    md5: bool,
    domains: bool,
    target: str,
    tracker: progress.Progress | None = None,
) -> None:
    """Stream the shard's URLs, BATCH_ROWS at a time, through the compiled lookup hashes into `target`; the
    URLs the compiled canonicalization leaves are canonicalized by DuckDB on a second connection. `tracker`
    hears how many rows are done after each batch."""
    source = (
        f"SELECT file_row_number AS row_number, {matching.quote(inputs.roles.url)} AS url "
        f"FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)"
    )
    cursor = con.cursor()

    def general(table: pa.Table) -> pa.Table:
        cursor.register("relaion_urls", table)
        try:
            return cursor.sql(_general_sql("relaion_urls")).to_arrow_table()
        finally:
            cursor.unregister("relaion_urls")

    # random hash prefixes do not compress: only row numbers and scopes are (1.2 s instead of 2.6 s to write
    # 30M entries, 10% larger, read 3x as fast)
    options = {"compression": {"row_number": "zstd", "scope": "zstd", "sha": "none", "md5": "none"}}
    writing = None  # a batch's entries being written (pyarrow frees the GIL) while the next batch is hashed
    try:
        with (
            pq.ParquetWriter(target, SCHEMA, use_dictionary=False, **options) as writer,
            ThreadPoolExecutor(max_workers=1) as encoder,
        ):

            def write(tables: list[pa.Table]) -> None:
                for table in tables:
                    writer.write_table(table, row_group_size=1_000_000)

            done = 0
            for batch in con.sql(source).arrow(BATCH_ROWS):
                table, unusable = lookup_hashes.entries(batch.column(0), batch.column(1), general, md5, domains)
                tables = [table.cast(SCHEMA)]
                if unusable.size:
                    none = pa.nulls(unusable.size, pa.uint64())
                    scope = pa.array(np.full(unusable.size, NONE, np.uint8))
                    row = pa.array(unusable.astype(np.uint32))
                    tables.append(pa.table([row, scope, none, none], schema=SCHEMA))
                if writing is not None:
                    writing.result()
                writing = encoder.submit(write, tables)
                done += batch.num_rows
                if tracker is not None:
                    tracker.update(done)
            if writing is not None:
                writing.result()
    finally:
        cursor.close()


def paths(work: str, name: str) -> tuple[str, str]:
    """The index file of a shard and its cache record (which input it was built from, and its description)."""
    return cache.path(work, name, cache.INDEX), cache.record_path(work, name, cache.INDEX)


def forget(work: str, name: str) -> None:
    """Remove the shard's index and everything kept in the cache for it."""
    for artifact in cache.ARTIFACTS:
        cache.forget(work, name, artifact)


def current(work: str, name: str, input_fingerprint: dict, md5: bool = False, domains: bool = False) -> dict | None:
    """The description of the shard's index when it is in the cache for exactly this input and the code that
    builds it now, unchanged since, and (with `md5`) holds md5 prefixes and (with `domains`) domain entries;
    else None."""
    kept = cache.lookup(work, name, cache.INDEX, {"input": input_fingerprint})
    if kept is None:
        return None
    meta = kept.extra
    if (md5 and not meta.get("md5")) or (domains and not meta.get("domains", True)):
        return None
    return meta


def build(
    con: duckdb.DuckDBPyConnection,
    inputs: matching.MatchInputs,
    work: str,
    input_fingerprint: dict,
    counts: dict,
    md5: bool = True,
    compiled: bool = True,
    domains: bool = True,
) -> dict:
    """Write the index of one shard (streaming, in bounded memory) and return its description, which also
    keeps the shard's row `counts` (they hold as long as the input does). `md5` and `domains`: whether it
    holds md5 prefixes and domain entries (a list without `url_md5` or `domain` entries needs neither; an
    index without them is rebuilt for one that has such entries, see `current`). The compiled lookup hashes write it
    when OpenSSL is there (`compiled=False`: the SQL of `build_sql`, the reference they are tested against)."""
    started = time.perf_counter()
    path, meta_path = paths(work, inputs.shard_name)
    storage.remove(meta_path)  # the record goes last: an index without one is never used
    compiled = compiled and lookup_hashes.available()
    write = _write_compiled if compiled else _write_sql
    tracker = progress.Progress(f"{inputs.shard_name}: lookup-hash index", counts.get("rows_in", 0), "rows")
    if storage.is_local(path):
        with storage.AtomicPath(path) as local:
            write(con, inputs, md5, domains, local, tracker)
            entries, size = pq.ParquetFile(local).metadata.num_rows, os.path.getsize(local)
    else:
        with tempfile.TemporaryDirectory(prefix="relaion-index-") as scratch:
            local = os.path.join(scratch, "index.parquet")
            write(con, inputs, md5, domains, local, tracker)
            entries, size = pq.ParquetFile(local).metadata.num_rows, os.path.getsize(local)
            storage.copy(local, path)
    meta = {
        "input": input_fingerprint,
        "counts": counts,
        "md5": md5,
        "domains": domains,
        "built_by": "compiled" if compiled else "sql",
        "entries": entries,
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 3),
    }
    cache.put(work, inputs.shard_name, cache.INDEX, {"input": input_fingerprint}, extra=meta)
    tracker.finish()
    return meta


def list_keys_sql(blocklist_sql: str) -> str:
    """SQL over a list relation (kind, value, source, category): the URL-derived entries with their index key."""
    return f"""
    SELECT kind, value, source, category,
           CASE kind WHEN {DOMAIN_KIND.sql} THEN {_prefix("sha256(value)")} ELSE {_prefix("value")} END AS prefix
    FROM ({blocklist_sql}) WHERE kind IN {sql_list(URL_DERIVED)}"""


def candidates_sql(index_path: str, blocklist_sql: str) -> str:
    """SQL: the distinct row numbers of the index with an entry whose prefix some URL-derived list entry has.
    Scopes are not compared: the matching query confirms every candidate on its full hashes."""
    ix = f"read_parquet({storage.duckdb_path(index_path)})"
    return f"""
    WITH keys AS MATERIALIZED ({list_keys_sql(blocklist_sql)})
    SELECT DISTINCT row_number FROM (
        SELECT row_number FROM {ix} i SEMI JOIN (SELECT prefix FROM keys WHERE kind <> {URL_MD5.sql}) k ON i.sha = k.prefix
        UNION ALL
        SELECT row_number FROM {ix} i SEMI JOIN (SELECT prefix FROM keys WHERE kind = {URL_MD5.sql}) k ON i.md5 = k.prefix
    ) ORDER BY row_number"""


def candidates(con: duckdb.DuckDBPyConnection, index_path: str, blocklist_sql: str) -> np.ndarray:
    """Row numbers (int64, sorted) that may match a URL-derived entry of the list; a superset of the matches."""
    rows = con.sql(candidates_sql(index_path, blocklist_sql)).to_arrow_table().column(0)
    return rows.to_numpy().astype(np.int64)


def list_candidates(con: duckdb.DuckDBPyConnection, work: str, name: str, blocklist_path: str, keep: bool = True):
    """`candidates` of the shard for the list file at `blocklist_path`, kept beside the index
    (`<shard>.url-candidates.parquet`, row numbers only) with the fingerprints of the index and the list file:
    removals find them, and the research check reads them instead of scanning the index again (3.5 s of an
    18M-row shard) while both files are unchanged. With `keep` False, kept ones are read, new ones not kept."""
    index_path = paths(work, name)[0]
    depends = {"index": cache.fingerprint(index_path), "list": cache.fingerprint(blocklist_path)}
    query = f"SELECT * FROM read_parquet({storage.duckdb_path(blocklist_path)})"
    table = cache.table(
        work,
        name,
        cache.CANDIDATES,
        depends,
        lambda: pa.table({"row_number": pa.array(candidates(con, index_path, query), pa.int64())}),
        keep,
    )
    return table.column("row_number").to_numpy().astype(np.int64)


def list_image_hits(
    con: duckdb.DuckDBPyConnection, work: str, name: str, inputs, kinds: set[str] | None, keep: bool = True
) -> pa.Table:
    """`matching.image_hits` of the shard's sidecar for its list file (row key, kind, source, category, hash;
    never a URL), kept beside the index (`<shard>.image-hits.parquet`) with the fingerprints of the sidecar and
    the list file: a removals rerun with the same list and the research check read them instead of joining
    every image hash of the sidecar with the list again (4.8 s of a 20M-row sidecar). With `keep` False, kept
    ones are read, new ones not kept. `kinds`: the list's kinds, or None to read them when the hits are not kept.
    """

    def compute() -> pa.Table:
        listed = kinds if kinds is not None else matching.list_kinds(con, inputs.blocklist_path)
        return matching.image_hits(con, inputs, listed)

    depends = {"sidecar": cache.fingerprint(inputs.sidecar_path), "list": cache.fingerprint(inputs.blocklist_path)}
    found = {}
    without_keys = cache.table(work, name, cache.IMAGE_HITS, depends, lambda: _keyless(found, compute()), keep)
    return found["hits"] if "hits" in found else _sidecar_keys(con, inputs.sidecar_path, without_keys)


def _keyless(found: dict, hits: pa.Table) -> pa.Table:
    """The image hits as they are kept: without the row key, which may be text of a listed row's URL
    (`row_keys`); the sidecar row number finds it again. `found` keeps the hits with their keys."""
    found["hits"] = hits
    return hits.set_column(1, "key", pa.nulls(hits.num_rows, pa.string()))


def _sidecar_keys(con: duckdb.DuckDBPyConnection, sidecar_path: str, hits: pa.Table) -> pa.Table:
    """Kept image hits with the key of each one's sidecar row, read from the sidecar (a scan filtered on the few
    row numbers)."""
    if not hits.num_rows:
        return hits
    rows = sorted(set(hits.column("sidecar_row").to_pylist()))
    keys = dict(
        con.execute(
            f"SELECT file_row_number, CAST(key AS VARCHAR) FROM read_parquet({storage.duckdb_path(sidecar_path)},"
            f" file_row_number = true) WHERE file_row_number IN ({', '.join(str(int(r)) for r in rows)})"
        ).fetchall()
    )
    column = pa.array([keys[r] for r in hits.column("sidecar_row").to_pylist()], pa.string())
    return hits.set_column(1, "key", column)


def unusable_rows(con: duckdb.DuckDBPyConnection, index_path: str) -> np.ndarray:
    """Row numbers whose URL is present but has no canonical form (sorted)."""
    query = f"SELECT row_number FROM read_parquet({storage.duckdb_path(index_path)}) WHERE scope = {NONE} ORDER BY row_number"
    return con.sql(query).to_arrow_table().column(0).to_numpy().astype(np.int64)


def reference(url: str | None) -> tuple[set[tuple[int, int | None, int | None]], list[tuple[str, str]]]:
    """What the reference canonicalizer and hashlib derive for one URL, independently of the SQL that builds the
    index: the index entries (scope, sha prefix, md5 prefix) as a set, and the (kind, value) pairs a list entry
    would need to match the URL (`url_sha256`/`url_md5` digests of the lookup expressions, `domain` suffixes)."""
    if url is None or url.strip(" ") == "":
        return set(), []
    try:
        canonical = urls.parse(url)
        scoped = urls.scoped_expressions(url, canonical)
    except ValueError:
        return {(NONE, None, None)}, []
    entries, keys = set(), []
    for expression, scope in scoped:
        data = expression.encode("utf-8", errors="surrogateescape")
        sha, md5 = hashlib.sha256(data).digest(), hashlib.md5(data).digest()
        entries.add((SCOPES.index(scope), int.from_bytes(sha[:8], "big"), int.from_bytes(md5[:8], "big")))
        keys += [(URL_SHA256.name, sha.hex()), (URL_MD5.name, md5.hex())]
    for host in urls.host_forms(canonical.host):
        if host.startswith("["):
            continue
        labels = host.split(".")
        for i in range(len(labels) - 1):
            suffix = ".".join(labels[i:])
            sha = hashlib.sha256(suffix.encode("utf-8", errors="surrogateescape")).digest()
            entries.add((DOMAIN, int.from_bytes(sha[:8], "big"), None))
            keys.append((DOMAIN_KIND.name, suffix))
    return entries, keys


def reference_entries(url: str | None) -> set[tuple[int, int | None, int | None]]:
    """The index entries of one URL as the reference derives them (see `reference`)."""
    return reference(url)[0]


def entries_of(con: duckdb.DuckDBPyConnection, index_path: str, rows: np.ndarray) -> dict[int, set[tuple]]:
    """The index entries of the given row numbers, as sets per row."""
    con.register("relaion_rows", pa.table({"row_number": pa.array(rows, pa.uint32())}))
    try:
        table = con.sql(
            f"SELECT i.row_number, i.scope, i.sha, i.md5 FROM read_parquet({storage.duckdb_path(index_path)}) i "
            "SEMI JOIN relaion_rows r ON r.row_number = i.row_number"
        ).to_arrow_table()
    finally:
        con.unregister("relaion_rows")
    out: dict[int, set[tuple]] = {int(r): set() for r in rows}
    for row, scope, sha, md5 in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        out[row].add((scope, sha, md5))
    return out
