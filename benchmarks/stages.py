"""Time every stage of the pipeline on one generated shard and report peak memory.

    python benchmarks/stages.py --rows 2000000 [--dir /tmp/relaion-bench] [--list-rows 2000000]

Generates the shard with the project's own generator (once per --dir), then runs blocklist, removals,
research (+ checks) and research-safe (+ checks) through the library, exactly as the Dagster assets do.
The shard's lookup-hash index is deleted first, so removals builds it; a last line re-runs removals as a new
list version would (the index is reused). Importing Great Expectations (once per process) is timed apart.
The generator sizes the lists for the shard (10x the entries for 10x the rows); with --list-rows, shards of
any size get the same lists, to see what the shard alone adds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import traceback
from pathlib import Path

from relaion_pipeline.core import cache, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.match import index
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks, quality


def in_child(run) -> tuple[float, float]:
    """Run one stage in a forked process: its wall time and its own peak RSS in MiB (the parent's imports
    included, as a Dagster step process would have them)."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            run()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise SystemExit(f"stage failed in pid {pid}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", default="/tmp/relaion-bench")
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory limit (default: the pipeline's)")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (default: the CPUs the process may use)")
    parser.add_argument(
        "--list-rows",
        type=int,
        default=None,
        help="size the lists' noise for shards of this many rows (default: --rows)",
    )
    args = parser.parse_args()
    root = Path(args.dir) / f"rows-{args.rows}{f'-lists-{args.list_rows}' if args.list_rows else ''}"
    if not (root / "shards").exists():
        started = time.perf_counter()
        demo.generate(root, shards=1, rows=args.rows, seed=0, list_rows=args.list_rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
    limit = {"duckdb_memory_limit": args.memory_limit} if args.memory_limit else {}
    # the list changes below remove a source on purpose: the shrink guard (issue 19) would refuse them
    settings = Settings.layout(root, root, duckdb_threads=args.threads, allow_list_shrink=True, **limit)
    threads = settings.threads()
    print(f"DuckDB: {threads} threads, memory limit {settings.memory_limit(threads)}")
    name = "joined/part-00000"
    index.forget(settings.work, name)  # a first run: nothing remembered beside the index either
    started = time.perf_counter()
    quality.expectations()
    print(f"importing Great Expectations: {time.perf_counter() - started:.2f} s (once per process, not counted)")
    stages = [
        ("blocklist", lambda: pipeline.build_blocklist(settings)),
        ("removals", lambda: pipeline.compute_removals(settings, name)),
        ("input checks", lambda: checks.check_input(settings, name)),
        ("research", lambda: pipeline.write_research(settings, name)),
        ("research checks", lambda: checks.check_research(settings, name)),
        ("research-safe", lambda: pipeline.write_research_safe(settings, name)),
        ("research-safe checks", lambda: checks.check_research_safe(settings, name)),
    ]
    total = validation = 0.0
    print(f"{'stage':<22} {'seconds':>8} {'rows/s':>12} {'peak RSS MiB':>13}")
    for label, run in stages:
        seconds, peak = in_child(run)
        total += seconds
        validation += seconds if "checks" in label else 0.0
        print(f"{label:<22} {seconds:>8.2f} {args.rows / seconds:>12,.0f} {peak:>13,.0f}")
    print(f"{'total':<22} {total:>8.2f} {args.rows / total:>12,.0f}")
    print(f"validation {validation:.2f} s = {100 * validation / total:.1f}% of the shard's processing time")

    def removals(label: str) -> None:
        seconds, peak = in_child(lambda: pipeline.compute_removals(settings, name))
        stats = pipeline.read_stats(settings, "removals", name)
        assert stats.index.reused
        searched = stats.near_matching.entries_searched if stats.near_matching else 0
        searched = f"{searched:,} pdq entries searched"
        print(f"{label:<50} {seconds:>8.2f} {args.rows / seconds:>12,.0f} {peak:>13,.0f}  {searched}")

    print("removals again, the index reused:")
    removals("  the same list (everything remembered)")
    changed = Path(settings.blocklists) / "bench-change"

    def lists() -> None:
        in_child(lambda: pipeline.build_blocklist(settings))  # not in this process, whose memory a child shares

    try:
        _pdq_change(settings, name, changed)
        lists()
        storage.remove(cache.path(settings.work, name, cache.NEAR_MATCHES))
        removals(f"  +{CHANGE:,} pdq entries, no near matches remembered")
        shutil.rmtree(changed)
        lists()
        removals(f"  -{CHANGE:,} pdq entries (the list as it was), near matches remembered")
        _pdq_change(settings, name, changed)
        lists()
        removals(f"  +{CHANGE:,} pdq entries, near matches remembered")
    finally:
        shutil.rmtree(changed, ignore_errors=True)
        lists()
    stats = pipeline.read_stats(settings, "removals", name)
    print(f"index: {stats['index']['entries']:,} entries, {stats['index']['bytes'] / 2**20:,.0f} MiB")


CHANGE = 1_000  # pdq entries a new list version adds in the last runs


def _pdq_change(settings: Settings, name: str, folder: Path) -> None:
    """A new partner's list of CHANGE pdq hashes: ten near copies of the shard's first sidecar hashes, the rest
    random."""
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    sidecar = pq.ParquetFile(Path(settings.sidecars) / f"{name}.parquet")
    first = next(sidecar.iter_batches(batch_size=100, columns=["pdq"])).column(0).to_pylist()
    near = []
    for value in [v for v in first if v and len(v) == 64][:10]:
        flipped = int(value, 16) ^ sum(1 << int(b) for b in rng.choice(256, 8, replace=False))
        near.append(f"{flipped:064x}")
    random = [rng.bytes(32).hex() for _ in range(CHANGE - len(near))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pdq.txt").write_text("\n".join(near + random) + "\n")


if __name__ == "__main__":
    main()
