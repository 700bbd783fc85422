"""The LAION `hash` of a row: how an old copy's rows are found in a release and in its removal list.

LAION-5B's metadata has a `hash` column: mmh3's 64-bit signed hash of url + text. A shard that has the column
keeps its values; for one that has not, it is computed here, the same way. Used by the removal list
(`report`), `relaion clean` and `relaion verify`.
"""

from __future__ import annotations

import duckdb
import mmh3
import numpy as np
import pyarrow as pa

from relaion_pipeline.core import schemas, shards, storage
from relaion_pipeline.core.schemas import quote

BATCH_ROWS = 262_144  # rows hashed at a time by `of_file`


def of_text(url: str | None, text: str | None) -> int:
    """mmh3 hash64 (signed, first half) of url + text, as LAION-5B computed its `hash` column."""
    return mmh3.hash64(f"{url or ''}{text or ''}".encode(), signed=True)[0]


def of_batch(batch: pa.RecordBatch, roles: schemas.Roles) -> np.ndarray:
    """LAION `hash` of every row of a batch: its own column when the shard has one, else computed."""
    if "hash" in batch.schema.names:
        return batch.column("hash").to_numpy(zero_copy_only=False).astype(np.int64)
    urls = batch.column(roles.url).to_pylist()
    texts = batch.column(roles.caption).to_pylist() if roles.caption else [""] * len(urls)
    return np.fromiter((of_text(u, t) for u, t in zip(urls, texts, strict=True)), dtype=np.int64, count=len(urls))


def of_file(path: str) -> np.ndarray:
    """The distinct LAION hashes of every row of a parquet file (sorted), read a batch at a time."""
    parquet = shards.open_parquet(path)
    roles = schemas.detect(parquet.schema_arrow, path)
    parts = [of_batch(b, roles) for b in parquet.iter_batches(batch_size=BATCH_ROWS)]
    return np.unique(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)


def of_rows(shard_path: str, row_numbers: np.ndarray) -> np.ndarray:
    """The LAION `hash` of the given rows of a shard: its own column, else computed here."""
    shard = shards.Shard(name="", path=shard_path)
    roles = shards.roles(shard)
    con = duckdb.connect()
    storage.register(con, shard_path)
    con.register("wanted", pa.table({"row_number": pa.array(row_numbers, pa.int64())}))
    names = set(shards.open_parquet(shard_path).schema_arrow.names)
    source = f"read_parquet({storage.duckdb_path(shard_path)}, file_row_number = true)"
    try:
        if "hash" in names:
            query = (
                f"SELECT CAST(hash AS BIGINT) FROM {source} WHERE file_row_number IN (SELECT row_number FROM wanted)"
            )
            return np.array([h for (h,) in con.execute(query).fetchall()], dtype=np.int64)
        caption = quote(roles.caption) if roles.caption else "''"
        query = (
            f"SELECT {quote(roles.url)}, {caption} FROM {source} "
            "WHERE file_row_number IN (SELECT row_number FROM wanted)"
        )
        rows = con.execute(query).fetchall()  # held in memory only to hash them; never written
        return np.array([of_text(u, t) for u, t in rows], dtype=np.int64)
    finally:
        con.close()
