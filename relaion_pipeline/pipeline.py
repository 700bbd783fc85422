"""The stages of the job as plain functions over a `Settings`: what each Dagster asset calls.

Every stage reads its inputs from files, writes its outputs under the work location named by shard, and returns
a dict of statistics (rows, removals by kind/source/category, bytes, seconds) that the asset reports as
metadata. Nothing here imports Dagster, so every stage runs the same from the CLI, a notebook or a test.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from relaion_pipeline import blocklists, matching, shards, storage, variants
from relaion_pipeline.settings import Settings

RESEARCH = "research"
RESEARCH_SAFE = "research-safe"
SIDECAR_HASHES = ("md5", "sha1", "sha256")


class StageError(RuntimeError):
    """A stage that cannot run because an earlier one has not produced what it needs."""


@dataclass(frozen=True)
class Work:
    """Where the stages keep their files under the work location."""

    root: str

    @property
    def blocklist_dir(self) -> str:
        return storage.join(self.root, "blocklist")

    def removals(self, name: str) -> str:
        return storage.join(self.root, "removals", name + ".parquet")

    def variant(self, variant: str, name: str) -> str:
        return storage.join(self.root, variant, name + ".parquet")

    def stats(self, stage: str, name: str) -> str:
        return storage.join(self.root, "stats", stage, name + ".json")

    def unsafe_rows(self, name: str) -> str:
        """Input row numbers that research-safe leaves out for their safety score (not for a list match)."""
        return storage.join(self.root, "unsafe-rows", name + ".parquet")

    def validation(self, suite: str, name: str) -> str:
        return storage.join(self.root, "validation", suite, name + ".json")


def build_blocklist(settings: Settings) -> dict:
    """Parse, validate, merge and version the partner lists; write the merged list."""
    started = time.perf_counter()
    lists_fingerprint = blocklists.fingerprint(settings.blocklists)  # before reading: a change meanwhile reruns
    merged = blocklists.load(settings.blocklists)
    path = blocklists.write(merged, Work(settings.work).blocklist_dir, lists_fingerprint)
    kinds = Counter(merged.table.column("kind").to_pylist())
    categories = Counter(merged.table.column("category").to_pylist())
    return {
        "version": merged.version,
        "entries": merged.entries,
        "sources": merged.sources,
        "entries_by_source_and_kind": merged.counts,
        "entries_by_kind": dict(sorted(kinds.items())),
        "entries_by_category": dict(sorted(categories.items())),
        "path": path,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _sidecar(settings: Settings, shard: shards.Shard) -> tuple[str | None, tuple[str, ...]]:
    path = storage.join(settings.sidecars, shard.file_name)
    if not settings.sidecars or not storage.exists(path):
        return None, ()
    schema = shards.open_parquet(path).schema_arrow
    if "key" not in schema.names:
        raise shards.ShardError(f"{path}: image-hash sidecar has no 'key' column (expected key plus md5/sha1/sha256)")
    columns = tuple(c for c in SIDECAR_HASHES if c in schema.names)
    if not columns:
        raise shards.ShardError(f"{path}: image-hash sidecar has none of the columns md5, sha1, sha256")
    return path, columns


def fingerprint(location: str) -> dict:
    """Size and modification time of a file: enough to tell that an input shard changed since it was matched."""
    fs, path = storage.filesystem(location)
    info = fs.info(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return {"bytes": info.get("size"), "modified": str(modified)}


def _start(settings: Settings, stage: str, name: str, *outputs: str) -> None:
    """Forget a stage's previous result for a shard before recomputing it, so a failed rerun never leaves
    an older output looking current."""
    for path in (Work(settings.work).stats(stage, name), *outputs):
        storage.remove(path)


def _count_by(table, *columns: str) -> dict[str, int]:
    """Distinct removed rows per value of `columns` (joined with '/')."""
    seen: dict[str, set[int]] = {}
    values = [table.column(c).to_pylist() for c in columns]
    for row_number, *key in zip(table.column("row_number").to_pylist(), *values, strict=True):
        seen.setdefault("/".join(str(k) for k in key), set()).add(row_number)
    return {k: len(v) for k, v in sorted(seen.items())}


def compute_removals(settings: Settings, name: str) -> dict:
    """Match one shard against the current merged blocklist and write its removals table."""
    started = time.perf_counter()
    work = Work(settings.work)
    shard = shards.resolve(settings.shards, name)
    _start(settings, "removals", name, work.removals(name))
    roles = shards.roles(shard)
    version, blocklist_path = blocklists.read_current(work.blocklist_dir)
    sidecar_path, sidecar_columns = _sidecar(settings, shard)
    con = matching.connect(settings)
    try:
        kinds = {
            k
            for (k,) in con.sql(
                f"SELECT DISTINCT kind FROM read_parquet({matching.sql_string(blocklist_path)})"
            ).fetchall()
        }
        inputs = matching.MatchInputs(
            shard_name=name,
            shard_path=shard.path,
            roles=roles,
            blocklist_path=blocklist_path,
            sidecar_path=sidecar_path,
            sidecar_columns=sidecar_columns,
        )
        removals = matching.find_removals(con, inputs, kinds, settings)
        url = matching.quote(roles.url)
        rows_in, null_urls = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {url} IS NULL OR trim({url}) = '') "
            f"FROM read_parquet({matching.sql_string(shard.path)})"
        ).fetchall()[0]
    finally:
        con.close()
    storage.write_parquet_atomic(removals, work.removals(name))
    stats = {
        "shard": name,
        "family": roles.family,
        "blocklist_version": version,
        "input": fingerprint(shard.path),
        "rows_in": rows_in,
        "rows_without_url": null_urls,
        "rows_removed": len(set(removals.column("row_number").to_pylist())),
        "matches": removals.num_rows,
        "removed_by_kind": _count_by(removals, "kind"),
        "removed_by_source": _count_by(removals, "source"),
        "removed_by_category": _count_by(removals, "category"),
        "removed_by_kind_source_category": _count_by(removals, "kind", "source", "category"),
        "removed_by_match": _count_by(removals, "match"),
        "sidecar": sidecar_path is not None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.write_json_atomic(stats, work.stats("removals", name))
    return stats


def stale_shards(settings: Settings, names: list[str]) -> list[str]:
    """Shards whose removals were not computed against the current blocklist (or not at all)."""
    pointer = blocklists.read_pointer(Work(settings.work).blocklist_dir)
    version = pointer and pointer["version"]
    stale = []
    for name in names:
        path = Work(settings.work).stats("removals", name)
        if not storage.exists(path) or storage.read_json(path).get("blocklist_version") != version:
            stale.append(name)
    return stale


def read_stats(settings: Settings, stage: str, name: str) -> dict:
    path = Work(settings.work).stats(stage, name)
    if not storage.exists(path):
        raise StageError(f"shard {name!r}: no {stage} output yet: materialize '{stage}' for this partition first")
    return storage.read_json(path)


def write_research(settings: Settings, name: str) -> dict:
    """research: the shard minus every row in its removals table."""
    started = time.perf_counter()
    work = Work(settings.work)
    _start(settings, RESEARCH, name, work.variant(RESEARCH, name))
    removal_stats = read_stats(settings, "removals", name)
    shard = shards.resolve(settings.shards, name)
    removals_sha256 = storage.size_and_sha256(work.removals(name))[1]
    removed = storage.read_table(work.removals(name), columns=["row_number"]).column("row_number").to_numpy()
    result = variants.write_research(shard.path, removed, work.variant(RESEARCH, name))
    stats = {
        "shard": name,
        "blocklist_version": removal_stats["blocklist_version"],
        "removals_sha256": removals_sha256,
        "rows_in": result.rows_in,
        "rows_removed": int(np.unique(removed).size),
        "rows_out": result.rows_out,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.write_json_atomic(stats, work.stats(RESEARCH, name))
    return stats


def write_research_safe(settings: Settings, name: str) -> dict:
    """research-safe: research minus rows whose safety score is above the safe threshold."""
    started = time.perf_counter()
    work = Work(settings.work)
    _start(settings, RESEARCH_SAFE, name, work.variant(RESEARCH_SAFE, name), work.unsafe_rows(name))
    research_stats = read_stats(settings, RESEARCH, name)
    shard = shards.resolve(settings.shards, name)
    roles = shards.roles(shard)
    dropped: list[np.ndarray] = []
    result = variants.write_research_safe(
        work.variant(RESEARCH, name), roles, settings, work.variant(RESEARCH_SAFE, name), dropped
    )
    removed = np.unique(storage.read_table(work.removals(name), columns=["row_number"]).column("row_number").to_numpy())
    research_rows = np.setdiff1d(np.arange(research_stats["rows_in"], dtype=np.int64), removed, assume_unique=True)
    positions = np.concatenate(dropped) if dropped else np.array([], dtype=np.int64)
    unsafe = pa.table({"row_number": pa.array(research_rows[positions], pa.int64())})
    storage.write_parquet_atomic(unsafe, work.unsafe_rows(name))
    stats = {
        "shard": name,
        "blocklist_version": research_stats["blocklist_version"],
        "research_sha256": research_stats["sha256"],
        "score": roles.punsafe or roles.nsfw or "none",
        "safe_threshold": settings.safe_threshold,
        "rows_in": result.rows_in,
        "rows_dropped_unsafe": result.rows_in - result.rows_out,
        "rows_out": result.rows_out,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.write_json_atomic(stats, work.stats(RESEARCH_SAFE, name))
    return stats
