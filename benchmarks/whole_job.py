"""The whole job as an operator runs it (issue 21): `relaion run` from a fresh work folder over several shards,
beside the raw DuckDB query over the same shards, in one run; then the same `relaion run` again with nothing
changed.

The job is the reference's (benchmarks/compare.py): one partner list of `--entries` sha256 values of URLs
(1,000 of them planted: the hashes of URLs of the shards, in their canonical form), no image hashes.
- reference: for each shard, one hand-written DuckDB query that hashes each raw URL with sha256, anti-joins
  the list and writes research (the rows kept) and research-safe (punsafe below the safe threshold) as zstd
  parquet, in one process (DuckDB on every core);
- pipeline: `relaion run --skip-image-matching` in a new process, from fresh work and release folders: the
  blocklist build, every shard's stages and checks through Dagster, the release and its check, start-up
  included (`--workers` as given);
- rerun: the same command again, nothing changed (every shard up to date, the release already there).

    python benchmarks/whole_job.py --shards 8 --rows 2000000 --repeat 1 --dir /tmp/bench-whole
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.canonical import urls as canonical
from relaion_pipeline.core import schemas, shards
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo

PLANTED = 1000


def prepare(root: Path, count: int, rows: int, entries: int) -> list[shards.Shard]:
    """The shards (made once per folder) and the partner list, as parquet for the reference and as the
    pipeline's url_sha256 list."""
    if not (root / "shards").exists():
        started = time.perf_counter()
        demo.generate(root, shards=count, rows=rows, seed=0)
        print(f"{count} shards of {rows:,} rows generated in {time.perf_counter() - started:.0f} s", flush=True)
    found = shards.discover(str(root / "shards"))
    listed = root / "job" / "blocklists" / "partner" / "url_sha256.parquet"
    if not listed.exists():
        planted = []
        for shard in found:
            url = shards.roles(shard).url
            column = pq.read_table(shard.path, columns=[url]).column(url).to_pylist()
            planted += [u for u in column[:: max(1, len(column) // (PLANTED // len(found) + 1))] if u]
        values = [
            hashlib.sha256(e[0].encode()).hexdigest()
            for e in (canonical.lookup_expressions(u) for u in planted[:PLANTED])
            if e
        ]
        noise = np.random.default_rng(7).bytes(32 * (entries - len(values)))
        values += [noise[i : i + 32].hex() for i in range(0, len(noise), 32)]
        listed.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"kind": ["url_sha256"] * len(values), "value": values}), listed)
    return found


def reference(found: list[shards.Shard], listed: Path, out: Path, threshold: float) -> float:
    """The raw DuckDB query over every shard; seconds."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    con = duckdb.connect()
    for i, shard in enumerate(found):
        roles = shards.roles(shard)
        url = schemas.quote(roles.url)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE kept AS
            SELECT s.* FROM read_parquet('{shard.path}') s ANTI JOIN read_parquet('{listed}') b
            ON sha256(s.{url}) = b.value"""
        )
        con.execute(f"COPY kept TO '{out / f'research-{i}.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
        safe = f"WHERE {schemas.quote(roles.punsafe)} < {threshold}" if roles.punsafe else ""
        con.execute(
            f"COPY (SELECT * FROM kept {safe}) TO '{out / f'safe-{i}.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
    con.close()
    return time.perf_counter() - started


def relaion_run(root: Path, out: Path, workers: int) -> float:
    """`relaion run` in a new process; seconds (it must succeed)."""
    command = [sys.executable, "-m", "relaion_pipeline.cli", "run", "--shards", str(root / "shards"),
               "--blocklists", str(root / "job" / "blocklists"), "--sidecars", str(out / "no-sidecars"),
               "--skip-image-matching", "--work", str(out / "work"), "--release", str(out / "releases"),
               "--workers", str(workers)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"relaion run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--entries", type=int, default=1_000_000, help="sha256 values in the partner list")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", default="/tmp/bench-whole")
    args = parser.parse_args()
    root = Path(args.dir) / f"{args.shards}x{args.rows}"
    found = prepare(root, args.shards, args.rows, args.entries)
    rows = sum(pq.ParquetFile(s.path).metadata.num_rows for s in found)
    threshold = Settings().safe_threshold
    print(f"{len(found)} shards, {rows:,} rows, a list of {args.entries:,} entries, {os.cpu_count()} cores", flush=True)
    for round_ in range(1, args.repeat + 1):
        ref = reference(found, root / "job" / "blocklists" / "partner" / "url_sha256.parquet", root / "ref", threshold)
        out = root / "run"
        shutil.rmtree(out, ignore_errors=True)
        (out / "no-sidecars").mkdir(parents=True)
        first = relaion_run(root, out, args.workers)
        again = relaion_run(root, out, args.workers)
        print(
            f"round {round_}: reference {ref:.1f} s; relaion run {first:.1f} s ({first / ref:.2f}x the reference,"
            f" {rows / first:,.0f} rows/s); again, nothing changed, {again:.1f} s ({again / first:.1%} of the first)",
            flush=True,
        )


if __name__ == "__main__":
    main()
