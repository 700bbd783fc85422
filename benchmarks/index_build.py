"""Time the lookup-hash index build of one generated shard (the compiled path, as removals runs it).

    python benchmarks/index_build.py --rows 2000000 [--dir /tmp/relaion-bench] [--repeat 3]

Generates the shard with the project's own generator (once per --dir, shared with `stages.py`), builds its
index `--repeat` times in this process after a warm-up build of a small shard (numba's compilation is not
timed) and prints each build's wall and CPU seconds, the entries and how many rows have a non-ASCII host. To compare two
versions of the code on the same shard, run it with `PYTHONPATH=<other checkout>` in the same sitting.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core import schemas
from relaion_pipeline.demo_data import demo
from relaion_pipeline.match import index, matching


def _inputs(path: Path) -> matching.MatchInputs:
    return matching.MatchInputs(path.stem, str(path), schemas.detect(pq.read_schema(path), str(path)), "", None)


def _build(con, path: Path, work: str) -> tuple[float, float, dict]:
    """One build: its wall seconds, the CPU seconds of every thread of this process (less moved by other
    processes on a shared machine), and the index's description."""
    started, cpu = time.perf_counter(), time.process_time()
    meta = index.build(con, _inputs(path), work, {"bytes": 0}, counts={}, compiled=True)
    return time.perf_counter() - started, time.process_time() - cpu, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", default="/tmp/relaion-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.dir) / f"rows-{args.rows}"
    if not (root / "shards").exists():
        demo.generate(root, shards=1, rows=args.rows, seed=0)
    shard = next((root / "shards").rglob("*.parquet"))
    con = matching.connect()
    with tempfile.TemporaryDirectory(prefix="relaion-index-bench-") as scratch:
        small = Path(scratch) / "warm.parquet"
        pq.write_table(pa.table({"url": ["http://a.example/x", "http://bücher.example/"], "caption": ["", ""]}), small)
        _build(con, small, scratch)
        times, cpus, meta = [], [], {}
        for _ in range(args.repeat):
            seconds, cpu, meta = _build(con, shard, scratch)
            times.append(seconds)
            cpus.append(cpu)
    url = matching.quote(_inputs(shard).roles.url)
    non_ascii = con.sql(
        f"SELECT count(*) FROM read_parquet('{shard}') "
        f"WHERE regexp_matches(regexp_extract({url}, '^[^:/]*://([^/?#]*)', 1), '[^\\x00-\\x7f]|%[89A-Fa-f]')"
    ).fetchall()[0][0]
    print(f"code: {Path(index.__file__).parent}")
    print(f"shard: {shard} ({args.rows:,} rows, {non_ascii:,} with a non-ASCII host), {meta['entries']:,} entries")
    for what, values in (("wall", times), ("CPU", cpus)):
        listed = ", ".join(f"{t:.2f}" for t in values)
        print(f"index build (compiled), {what} seconds: {listed}; median {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
