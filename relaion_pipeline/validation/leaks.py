"""Leaks: rows of a research file that a list entry or the keyword rule matches, found without the matching
query, for the `research_has_no_blocklist_match` check.

URL and domain entries: every published row the lookup-hash index ties to an entry is re-derived by the
Python reference (`urls` + hashlib), and a seeded sample of rows re-derives the index itself. Exact image
hashes are re-joined with the sidecar; a sample of the sidecar's PDQ hashes is compared with every pdq entry
by brute force; the keyword rule runs on the research file itself; no removed row key may be left. Row keys
only, never a URL.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from relaion_pipeline.core import db, shards, storage
from relaion_pipeline.core.schemas import quote, sql_string
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import PDQ, SIDECAR_EXACT, sidecar_column
from relaion_pipeline.match import index, matching, near_matching, pdq_index
from relaion_pipeline.stages import pipeline
from relaion_pipeline.stages.work import StageError, Work

AUDIT_ROWS = 5_000  # input rows per shard whose index entries the research check re-derives in Python


def _sample_rows(name: str, rows_in: int) -> np.ndarray:
    """Row numbers (sorted) of a deterministic random sample of the shard's rows, seeded by its name."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16)
    return np.sort(np.random.default_rng(seed).choice(rows_in, size=min(AUDIT_ROWS, rows_in), replace=False))


def _urls_of(con, shard: shards.Shard, name: str, rows: np.ndarray) -> dict[int, tuple[str, str | None]]:
    """(row key, URL) of the given row numbers of the shard, in one pass over it."""
    con.register("relaion_rows", pa.table({"row_number": pa.array(rows, pa.int64())}))
    try:
        roles = shards.roles(shard)
        found = con.execute(
            f"SELECT file_row_number, {roles.key_sql(name)}, {quote(roles.url)} "
            f"FROM read_parquet({storage.duckdb_path(shard.path)}, file_row_number = true) "
            "SEMI JOIN relaion_rows s ON s.row_number = file_row_number"
        ).fetchall()
    finally:
        con.unregister("relaion_rows")
    return {row: (key, url) for row, key, url in found}


def _reference_matches(con, blocklist_path: str, derived: list[tuple[str, list[tuple[str, str]]]]) -> list[tuple]:
    """(row_key, kind, source, category) of every list entry among the (kind, value) pairs that the reference
    implementation derived per row key (`index.reference`): the same rule as the matching query, other code."""
    keys = [key for key, pairs in derived for _ in pairs]
    kinds = [kind for _, pairs in derived for kind, _ in pairs]
    values = [value for _, pairs in derived for _, value in pairs]
    con.register("relaion_derived", pa.table({"row_key": keys, "kind": kinds, "value": values}, schema=_DERIVED))
    try:
        return con.execute(
            f"SELECT DISTINCT d.row_key, b.kind, b.source, b.category FROM relaion_derived d "
            f"JOIN read_parquet({storage.duckdb_path(blocklist_path)}) b ON b.kind = d.kind AND b.value = d.value"
        ).fetchall()
    finally:
        con.unregister("relaion_derived")


_DERIVED = pa.schema([("row_key", pa.string()), ("kind", pa.string()), ("value", pa.string())])


def _still_published(con, matched: list[tuple], research_path: str, removals: str, roles, integer: bool) -> list[tuple]:
    """The matches (row_key, kind, source, category) whose row is in research: by its key where the shard has
    keys (`integer`: an integer key column, `matching.integer_key`), else (positional keys) by its absence
    from the removals table."""
    columns = ("row_key", "kind", "source", "category")
    table = pa.table({c: pa.array([m[i] for m in matched], pa.string()) for i, c in enumerate(columns)})
    con.register("relaion_matched", table)
    try:
        if roles.key is not None:  # research's keys are filtered by the few matched ones before any hash table
            among = matching.key_in_sql(roles, integer, "SELECT row_key FROM relaion_matched")
            present = (
                f"SELECT CAST({quote(roles.key)} AS VARCHAR) FROM read_parquet({storage.duckdb_path(research_path)}) "
                f"WHERE {among}"
            )
            return con.execute(f"SELECT * FROM relaion_matched WHERE row_key IN ({present})").fetchall()
        removed = f"SELECT row_key FROM read_parquet({storage.duckdb_path(removals)})"
        return con.execute(f"SELECT * FROM relaion_matched WHERE row_key NOT IN ({removed})").fetchall()
    finally:
        con.unregister("relaion_matched")


def find(settings: Settings, con, name: str, shard: shards.Shard, blocklist_path: str, research_path: str):
    """Rows of research that a list entry or the keyword rule matches, found without the matching query; and
    how the index that the matching query used was audited. Returns (leaks, audit statistics)."""
    work = Work(settings.work)
    roles = shards.roles(shard)
    removals = work.removals(name)
    rows_in = storage.num_rows(shard.path)
    meta = index.current(settings.work, name, pipeline.fingerprint(shard.path))
    if meta is None:
        raise StageError(f"shard {name!r}: its lookup-hash index is missing or older than the input: rerun removals")
    index_path = index.paths(settings.work, name)[0]
    sample = _sample_rows(name, rows_in) if rows_in else np.zeros(0, np.int64)
    rows = _urls_of(con, shard, name, sample)
    with ThreadPoolExecutor(max_workers=1) as pool:  # DuckDB scans the index while Python derives the sample
        # 1. Every published row the index ties to a URL or domain entry, confirmed by the reference
        #    implementation (research is the input minus the rows of the removals table: check 5 and the counts
        #    check hold it to that, so a removed candidate cannot leak and is not derived again).
        #    The rows the index names are those removals found for this index and list file, when it kept them.
        candidates_later = db.on_cursor(con, pool, index.list_candidates, settings.work, name, blocklist_path, False)
        # 2. The index itself, re-derived by the reference implementation on a sample of rows, whose URLs are
        #    matched against the list directly as well.
        entries_later = db.on_cursor(con, pool, index.entries_of, index_path, sample)
        # 3. Image hashes through the sidecar: exact ones re-joined with the list, PDQ ones of a sample compared
        #    with every pdq entry.
        sidecar_path, columns = pipeline.sidecar_of(settings, shard)
        images_later = db.on_cursor(
            con, pool, _image_matches, settings, name, shard, sidecar_path, columns, blocklist_path
        )
        near_later = db.on_cursor(con, pool, _pdq_audit, name, shard, sidecar_path, columns, blocklist_path)
        integer = matching.integer_key(research_path, roles)
        on_research = db.on_cursor(con, pool, _research_leaks, settings, name, roles, research_path, removals, integer)
        derived_of = {row: index.reference(url) for row, (_, url) in rows.items()}
        candidates = candidates_later.result()
        removed = storage.read_table(removals, columns=["row_number"]).column("row_number").to_numpy()
        published = np.setdiff1d(candidates, removed)
        unsampled = np.setdiff1d(published, sample)
        if unsampled.size:
            more = _urls_of(con, shard, name, unsampled)
            derived_of |= {row: index.reference(url) for row, (_, url) in more.items()}
            rows |= more
        entries = entries_later.result()
    derived = [(rows[row][0], derived_of[row][1]) for row in published.tolist()]
    mismatched = []
    for row in sample.tolist():
        key = rows[row][0]
        expected, pairs = derived_of[row]
        if not meta.get("md5"):  # built for lists without url_md5 entries
            expected = {(scope, sha, None) for scope, sha, _ in expected}
        if not meta.get("domains", True):  # built for lists without domain entries
            expected = {entry for entry in expected if entry[0] != index.DOMAIN}
        if expected != entries[row]:
            mismatched.append(key)
        derived.append((key, pairs))
    leaks = [(key, "index-mismatch", "", "") for key in mismatched]
    matched = _reference_matches(con, blocklist_path, derived)
    matched += images_later.result() + near_later.result()[0]
    leaks += _still_published(con, sorted(set(matched)), research_path, removals, roles, integer)
    leaks += on_research.result()
    audit = {
        "index_entries": meta["entries"],
        "candidate_rows": int(candidates.size),
        "rows_matched_by_reference": len({m[0] for m in matched}),
        "audited_rows": len(sample),
        "audit_mismatches": len(mismatched),
        "pdq_audited_rows": near_later.result()[1],
    }
    return leaks, audit


def _research_leaks(
    con, settings: Settings, name: str, roles, research_path: str, removals: str, integer: bool
) -> list[tuple]:
    """Rows of research itself that the keyword rule matches (4), and removed row keys still in it (5;
    `integer`: an integer key column)."""
    leaks = []
    # 4. The keyword rule, on the research file itself.
    pattern = matching.keyword_pattern(settings.keywords)
    unsafe = matching.unsafe_condition(roles, settings.research_threshold, settings)
    if pattern and unsafe and roles.caption:
        leaks += con.execute(
            f"SELECT {roles.key_sql(name)}, '{matching.KEYWORD_KIND}', '{matching.KEYWORD_SOURCE}', "
            f"'{matching.KEYWORD_CATEGORY}' FROM read_parquet({storage.duckdb_path(research_path)}, file_row_number = true) "
            f"WHERE {unsafe} AND regexp_matches({quote(roles.caption)}, {sql_string(pattern)})"
        ).fetchall()
    # 5. No removed row key is still in research: the keys of the removed rows, as the shard has them at their
    #    row numbers (the removals table writes them in a form that cannot disclose a URL, `row_keys`).
    if roles.key is not None:
        shard = shards.resolve(settings.shards, name)
        inputs = matching.MatchInputs(name, shard.path, roles, "", None)
        removed = matching.rows_of(con, inputs, Work(settings.work).removed_rows(name)).select(["row_key"])
        con.register("relaion_removed_keys", removed)
        try:
            among = matching.key_in_sql(roles, integer, "SELECT row_key FROM relaion_removed_keys")
            leaks += con.execute(
                f"SELECT CAST({quote(roles.key)} AS VARCHAR), 'removed-row', '', '' "
                f"FROM read_parquet({storage.duckdb_path(research_path)}) WHERE {among}"
            ).fetchall()
        finally:
            con.unregister("relaion_removed_keys")
    return leaks


def _image_matches(
    con,
    settings: Settings,
    name: str,
    shard: shards.Shard,
    sidecar_path: str | None,
    columns: tuple,
    blocklist_path: str,
) -> list[tuple]:
    """(row key, kind, source, category) of every exact image hash of the sidecar that the list holds: the
    sidecar joined with the list (`matching.image_hits`), or what removals found for this sidecar and list file
    when it kept them (`index.list_image_hits`; the check keeps none of its own)."""
    if not sidecar_path or not {sidecar_column(k) for k in SIDECAR_EXACT} & set(columns):
        return []
    inputs = matching.MatchInputs(name, shard.path, shards.roles(shard), blocklist_path, sidecar_path, columns)
    hits = index.list_image_hits(con, settings.work, name, inputs, None, keep=False)
    return sorted(set(zip(*(hits.column(c).to_pylist() for c in ("key", "kind", "source", "category")), strict=True)))


PDQ_AUDIT_PAIRS = 100_000_000  # sidecar rows x pdq entries compared by brute force per shard (~0.1 s)


def _pdq_audit(con, name: str, shard: shards.Shard, sidecar_path: str | None, columns: tuple, blocklist_path: str):
    """PDQ near matches of a seeded sample of the shard's matchable sidecar hashes (the rows matching reads),
    found by comparing each with every pdq entry (`pdq_index.brute_force`), not with the multi-index: (row key, kind, source,
    category) of each, and how many hashes were sampled."""
    if not sidecar_path or PDQ.sidecar_column not in columns:
        return [], 0
    if "distance" not in shards.open_parquet(blocklist_path).schema_arrow.names:
        return [], 0  # a list file from before pdq entries existed
    entries = con.sql(
        f"SELECT value, source, category, distance FROM read_parquet({storage.duckdb_path(blocklist_path)}) "
        f"WHERE kind = {PDQ.sql} ORDER BY value, source, category"
    ).to_arrow_table()
    if not entries.num_rows:
        return [], 0
    size = max(16, min(5_000, PDQ_AUDIT_PAIRS // entries.num_rows))
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 2**31
    inputs = matching.MatchInputs(name, shard.path, shards.roles(shard), blocklist_path, sidecar_path, columns)
    sampled = near_matching.sidecar_hashes_sql(
        inputs, sample=size, seed=seed, sidecar_rows=storage.num_rows(sidecar_path)
    )
    sample, words = near_matching.matchable(con.sql(sampled).to_arrow_table())
    if not sample.num_rows:
        return [], 0
    entry_words = pdq.to_words(entries.column("value").to_pylist())
    found = pdq_index.brute_force(words, entry_words, entries.column("distance").to_numpy().astype(np.int32))
    keys = sample.column("row_key").to_pylist()
    sources, categories = entries.column("source"), entries.column("category")
    return [(keys[q], PDQ.name, sources[e].as_py(), categories[e].as_py()) for q, e, _ in found], sample.num_rows
