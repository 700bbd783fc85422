"""Cleaning an old copy of the dataset with a published release, for people who downloaded it before.

Two ways, as LAION offered them: by the release's removal list (drop every row whose LAION `hash` it lists),
or by difference (keep only rows the release's variant still holds, shard by shard). Rows are identified by
the LAION `hash` (mmh3 of url + text) taken from the shard or computed, so any supported schema works. Each
shard streams batch by batch and is written with its original schema under the same relative path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import mmh3
import numpy as np
import pyarrow as pa

from relaion_pipeline import release, report, schemas, shards, storage, variants


class CleanError(ValueError):
    """A clean that cannot be done as asked; the message says why and what to do instead."""


@dataclass
class ShardCleaned:
    shard: str
    rows_in: int
    rows_removed: int
    rows_out: int
    seconds: float


def batch_hashes(batch: pa.RecordBatch, roles: schemas.Roles) -> np.ndarray:
    """LAION `hash` of every row of a batch: its own column when the shard has one, else mmh3(url + text)."""
    if "hash" in batch.schema.names:
        return batch.column("hash").to_numpy(zero_copy_only=False).astype(np.int64)
    urls = batch.column(roles.url).to_pylist()
    texts = batch.column(roles.caption).to_pylist() if roles.caption else [""] * len(urls)
    return np.fromiter(
        (mmh3.hash64(f"{u or ''}{t or ''}".encode(), signed=True)[0] for u, t in zip(urls, texts, strict=True)),
        dtype=np.int64,
        count=len(urls),
    )


def _file_hashes(path: str) -> np.ndarray:
    parquet = shards.open_parquet(path)
    roles = schemas.detect(parquet.schema_arrow, path)
    parts = [batch_hashes(b, roles) for b in parquet.iter_batches(batch_size=variants.BATCH_ROWS)]
    return np.unique(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)


def _listed(hashes: np.ndarray, removal_list: str) -> np.ndarray:
    """Which of `hashes` the removal list names, reading the list a row group at a time: memory grows with
    the shard being cleaned, not with the list (which may name hundreds of millions of rows)."""
    listed = np.zeros(hashes.size, dtype=bool)
    wanted = np.unique(hashes)
    for batch in shards.open_parquet(removal_list).iter_batches(batch_size=1 << 20, columns=["hash"]):
        found = np.intersect1d(wanted, batch.column(0).to_numpy(), assume_unique=False)
        if found.size:
            listed |= np.isin(hashes, found)
    return listed


def clean(release_location: str, input_location: str, output_location: str, by: str = "removal-list",
          variant: str = "research-safe", progress=print) -> dict:  # fmt: skip
    """Clean every shard under `input_location` into `output_location`; return the report (also written)."""
    if by not in ("removal-list", "difference"):
        raise CleanError(f"--by must be 'removal-list' or 'difference', got {by!r}")
    published = release.resolve(release_location)
    manifest = storage.read_json(storage.join(published, "manifest.json"))
    removal_list = None
    if by == "removal-list":
        if not manifest.get("removal_list", {}).get("published"):
            why = manifest.get("removal_list", {}).get("reason", "this release has none")
            raise CleanError(f"{published}: no removal list ({why}); use --by difference")
        removal_list = storage.join(published, report.REMOVAL_LIST)
    found = shards.discover(input_location)
    if not found:
        raise CleanError(f"{input_location}: no parquet shards to clean")
    cleaned = []
    for index, shard in enumerate(found, start=1):
        started = time.perf_counter()
        parquet = shards.open_parquet(shard.path)
        roles = schemas.detect(parquet.schema_arrow, shard.path)
        hashes = np.concatenate(
            [batch_hashes(b, roles) for b in parquet.iter_batches(batch_size=variants.BATCH_ROWS)]
            or [np.array([], dtype=np.int64)]
        )
        if by == "difference":
            entry = manifest["shards"].get(shard.name)
            if entry is None:
                raise CleanError(f"{shard.path}: the release has no shard {shard.name!r} to compare with")
            keep_rows = np.isin(hashes, _file_hashes(storage.join(published, entry["files"][variant]["path"])))
        else:
            keep_rows = ~_listed(hashes, removal_list)

        def keep(batch: pa.RecordBatch, first: int, keep_rows=keep_rows) -> pa.Array:
            return pa.array(keep_rows[first : first + batch.num_rows])

        stats = variants.filter_shard(shard.path, storage.join(output_location, shard.file_name), keep)
        done = ShardCleaned(shard.name, stats.rows_in, stats.rows_in - stats.rows_out, stats.rows_out,
                            round(time.perf_counter() - started, 3))  # fmt: skip
        cleaned.append(done)
        progress(f"[{index}/{len(found)}] {shard.name}: {done.rows_in:,} rows, {done.rows_removed:,} removed")
    result = {
        "release": manifest["version"],
        "by": by,
        "variant": variant if by == "difference" else None,
        "shards": [asdict(c) for c in cleaned],
        "rows_in": sum(c.rows_in for c in cleaned),
        "rows_removed": sum(c.rows_removed for c in cleaned),
    }
    storage.write_json_atomic(result, storage.join(output_location, "clean-report.json"))
    return result
