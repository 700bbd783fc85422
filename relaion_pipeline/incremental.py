"""Incremental list updates: which shards a new blocklist version can change, and recording the others as
verified against it without rewriting a byte of their outputs.

A shard's outputs name the list version they were matched against. When the `blocklist` asset writes a new
version, the entries added or removed since the shard's version are joined with the shard's lookup-hash
index (URL and domain entries), its sidecar (exact image hashes) and, for pdq entries, near-matched with the
sidecar's PDQ hashes. Nothing found: the shard's stats move to the new version (`verified_from` keeps the old
one). Otherwise it stays stale, and `blocklist_version_sensor` re-runs it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import duckdb
import numpy as np

from relaion_pipeline import status
from relaion_pipeline.core import shard_lock, shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists, pdq
from relaion_pipeline.lists.kinds import DOMAIN, IMAGE, PDQ, SIDECAR_EXACT, URL_DERIVED, URL_MD5, by_name
from relaion_pipeline.match import index, matching, near_matching
from relaion_pipeline.match.pdq_index import PdqIndex
from relaion_pipeline.stages.pipeline import image_gap, sidecar_of
from relaion_pipeline.stages.work import StageError, Work


def _delta_sql(old_path: str, new_path: str) -> str:
    """SQL: the entries (kind, value, source, category, distance) one list version has and the other has not
    (a list written before pdq entries existed has no distance column: null there)."""
    old, new = (
        f"SELECT kind, value, source, category, "
        f"{'distance' if 'distance' in shards.open_parquet(p).schema_arrow.names else 'NULL'}::SMALLINT AS distance "
        f"FROM read_parquet({storage.duckdb_path(p)})"
        for p in (old_path, new_path)
    )
    return f"(({old}) EXCEPT ({new})) UNION ALL (({new}) EXCEPT ({old}))"


def _has_kind(con, list_path: str, kind: str) -> bool:
    query = (
        f"SELECT 1 FROM read_parquet({storage.duckdb_path(list_path)}) WHERE kind = {matching.sql_string(kind)} LIMIT 1"
    )
    return bool(con.execute(query).fetchall())


def _touches(
    con, settings: Settings, shard: shards.Shard, name: str, delta: str, kinds: set[str], near: dict[str, PdqIndex]
) -> str:
    """Why the changed entries `delta` (a relation) may change this shard's removals; empty when they cannot.
    `near` keeps the multi-index of each delta's pdq entries, built for the first shard and shared."""
    unknown = kinds - set(URL_DERIVED) - set(IMAGE)
    if unknown:
        return f"the change has entries of kind {', '.join(sorted(unknown))}"
    if kinds & set(URL_DERIVED):
        rows = index.candidates(con, index.paths(settings.work, name)[0], f"SELECT * FROM {delta}")
        if rows.size:
            return f"{rows.size:,} rows may match a changed URL or domain entry"
    sidecar_path, columns = sidecar_of(settings, shard)
    if gap := image_gap(settings, name, kinds, sidecar_path, columns):
        return gap
    image = [k for k in map(by_name, SIDECAR_EXACT) if k.name in kinds and k.sidecar_column in columns]
    if sidecar_path and image:
        hits = con.execute(
            " UNION ALL ".join(
                f"SELECT 1 FROM read_parquet({storage.duckdb_path(sidecar_path)}) c JOIN {delta} d "
                f"ON d.kind = {k.sql} AND d.value = {matching.lower_hex_sql('c.' + k.sidecar_column)}"
                for k in image
            )
            + " LIMIT 1"
        ).fetchall()
        if hits:
            return "an image hash of its sidecar is a changed entry"
    if sidecar_path and PDQ.name in kinds and PDQ.sidecar_column in columns:
        if delta not in near:
            entries = con.execute(f"SELECT value, distance FROM {delta} WHERE kind = {PDQ.sql}").fetchall()
            near[delta] = PdqIndex.build(
                [v for v, _ in entries], np.array([pdq.DEFAULT_DISTANCE if d is None else d for _, d in entries])
            )
        changed = near[delta]
        inputs = matching.MatchInputs(name, shard.path, shards.roles(shard), "", sidecar_path, columns)
        if near_matching.near(con, inputs, changed)[0].num_rows:
            return "a PDQ hash of its sidecar is near a changed entry"
    return ""


def verify_untouched(settings: Settings, names: list[str]) -> dict:
    """After a new list version, find the shards the change touches; record the others as verified against it.

    A shard whose outputs were made against an older version, from the same input, is untouched when none of
    the entries added or removed since that version can match it: no URL-derived entry hits its lookup-hash
    index and no image-hash entry its sidecar. Its outputs stay as they are (not a byte changes); its stats
    now name the current version, with `verified_from` the version they were computed against. Touched shards
    (and any whose chain is incomplete or whose input changed) are left stale, for a run to re-match.
    """
    started = time.perf_counter()
    work = Work(settings.work)
    version, current_path = blocklists.read_current(work.blocklist_dir)
    touched: dict[str, str] = {}
    verified: list[str] = []
    deltas: dict[str, tuple[str, set[str]]] = {}
    near: dict[str, PdqIndex] = {}  # delta table -> index of its pdq entries
    con = matching.connect(settings)
    try:
        for name in names:
            try:
                found = status.chain(settings, name)
                chain = {stage: found.of(stage) for stage in status.STAGES}
            except StageError:
                touched[name] = "not processed yet"
                continue
            old = found.removals.blocklist_version
            if old == version and all(s.blocklist_version == version for s in chain.values()):
                continue
            shard = shards.resolve(settings.shards, name)
            old_path = storage.join(work.blocklist_dir, f"blocklist-{old}.parquet")
            if any(s.blocklist_version != old for s in chain.values()):
                touched[name] = "its outputs were made against different list versions"
            elif not storage.exists(old_path):
                touched[name] = f"list version {old} is no longer kept"
            elif (
                status.inputs_changed(settings, name, found.removals)
                or index.current(
                    settings.work,
                    name,
                    found.removals.input,
                    md5=_has_kind(con, current_path, URL_MD5.name),
                    domains=_has_kind(con, current_path, DOMAIN.name),
                )
                is None
            ):
                touched[name] = "its input changed or has no current lookup-hash index"
            else:
                if old not in deltas:
                    table = f"relaion_delta_{len(deltas)}"
                    con.execute(f"CREATE TEMP TABLE {table} AS {_delta_sql(old_path, current_path)}")
                    kinds = {k for (k,) in con.execute(f"SELECT DISTINCT kind FROM {table}").fetchall()}
                    deltas[old] = (table, kinds)
                table, kinds = deltas[old]
                why = _touches(con, settings, shard, name, table, kinds, near)
                if why:
                    touched[name] = why
                    continue
                with shard_lock.holding(settings.work, name):
                    for stage, stats in chain.items():
                        verified_stats = replace(
                            stats, blocklist_version=version, verified_from=stats.verified_from or old
                        )
                        verified_stats.write(work.stats(stage, name))
                verified.append(name)
    except duckdb.Error as error:
        raise shards.unreadable(error, current_path) from None
    finally:
        con.close()
    return {
        "blocklist_version": version,
        "touched": touched,
        "verified": verified,
        "seconds": round(time.perf_counter() - started, 3),
    }
