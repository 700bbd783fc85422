"""Compile the matching kernels once, ahead of the first run, instead of inside it.

The kernels (`canonical_kernel`, `lookup_hashes`, `pdq_index`) are compiled by numba the first time they run
and kept on disk (`__pycache__` beside their modules, or numba's user cache where that folder is read-only).
On 2 cores that first compile takes about two minutes, which a fresh install, a new Celery worker or a new
Kubernetes pod would otherwise spend inside its first shard. `relaion prepare` (run by `make install`, and in
an image's build, docs/deployment.md) runs a tiny job through every kernel and signature the pipeline uses,
so the cache holds them all; `pending` tells the CLI and the stages whether compiling is still ahead.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def kernels() -> dict:
    """The cached numba dispatchers of the pipeline, by name."""
    from relaion_pipeline.canonical import canonical_kernel, lookup_hashes
    from relaion_pipeline.match import pdq_index

    found = {}
    for module in (canonical_kernel, lookup_hashes, pdq_index):
        for name, value in vars(module).items():
            if type(getattr(value, "_cache", None)).__name__ == "FunctionCache":  # cache=True: kept on disk
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = value
    return found


def pending() -> list[str]:
    """The kernels with nothing compiled on disk yet: a run will compile them first (about two minutes)."""
    missing = []
    for name, dispatcher in kernels().items():
        index = getattr(getattr(dispatcher._cache, "_cache_file", None), "_index_path", None)
        if index is None or not Path(index).exists():
            missing.append(name)
    return missing


def prepare(progress=print) -> float:
    """Run a tiny job through every kernel and signature (both string offset widths, both PDQ search paths);
    return the seconds it took."""
    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.demo_data import demo
    from relaion_pipeline.lists import pdq
    from relaion_pipeline.match import pdq_index
    from relaion_pipeline.stages import pipeline
    from relaion_pipeline.validation import checks

    started = time.perf_counter()
    todo = pending()
    progress(
        f"compiling {len(todo)} matching kernels once for this installation (~2 min on 2 cores)..."
        if todo
        else "the matching kernels are compiled already; checking every signature..."
    )
    with tempfile.TemporaryDirectory(prefix="relaion-prepare-") as root:
        demo.generate(Path(root) / "in", shards=4, rows=300, seed=1)
        wide = Path(root) / "in" / "shards" / "wide" / "part-00000.parquet"  # 64-bit string offsets
        table = pq.read_table(Path(root) / "in" / "shards" / "relaion" / "part-00002.parquet")
        wide.parent.mkdir(parents=True)
        pq.write_table(table.cast(pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f
                                             for f in table.schema])), wide)  # fmt: skip
        settings = Settings.layout(Path(root) / "in", Path(root) / "out", skip_image_matching=True)
        pipeline.build_blocklist(settings)
        for shard in ("joined/part-00000", "plain/part-00001", "relaion/part-00002", "minimal/part-00003",
                      "wide/part-00000"):  # fmt: skip
            pipeline.compute_removals(settings, shard)
            pipeline.write_research(settings, shard)
            checks.check_research(settings, shard)
        rng = np.random.default_rng(0)
        hexes = [rng.bytes(32).hex() for _ in range(64)]
        index = pdq_index.PdqIndex.build(hexes, np.full(64, pdq.DEFAULT_DISTANCE))
        queries, _ = pdq_index.hex_words(pa.array(hexes))
        saved = pdq_index.EXPANDED_PROBES
        try:
            for probes in (0, 1 << 30):  # the sorted search of large lists, the expanded one of small lists
                pdq_index.EXPANDED_PROBES = probes
                index.expanded = None
                index.search(queries)
        finally:
            pdq_index.EXPANDED_PROBES = saved
    seconds = time.perf_counter() - started
    progress(f"matching kernels ready ({seconds:.0f} s)")
    return seconds
