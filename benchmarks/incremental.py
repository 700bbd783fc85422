"""How long finding the shards a list change touches takes, against a full rerun.

    python benchmarks/incremental.py --rows 2000000 --shards 50 [--dir /tmp/relaion-bench] [--change 1000]

Runs the pipeline's stages once on one generated shard (as `stages.py` does), then lays out `--shards` shards
that share its content by hard links (the shard, its sidecar, its lookup-hash index and its outputs: same bytes, same
fingerprint, distinct names), adds a partner list of `--change` new entries, rebuilds the blocklist and times
`incremental.verify_untouched` over all shards. A full rerun is timed as N x the measured per-shard time.
Asserts that no output byte of an untouched shard changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from relaion_pipeline import incremental
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.match import index
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks, quality

NAME = "joined/part-00000"


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    os.link(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=50)
    parser.add_argument("--change", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/relaion-bench")
    args = parser.parse_args()
    root = Path(args.dir) / f"rows-{args.rows}"
    if not (root / "shards").exists():
        demo.generate(root, shards=1, rows=args.rows, seed=0)
    bench = Path(args.dir) / f"incremental-{args.rows}-{args.shards}"
    shutil.rmtree(bench, ignore_errors=True)
    (bench / "blocklists").mkdir(parents=True)
    for source in (root / "blocklists").iterdir():
        shutil.copytree(source, bench / "blocklists" / source.name)
    settings = Settings.layout(bench, bench)
    one = Settings.layout(root, root)
    quality.expectations()

    started = time.perf_counter()
    pipeline.build_blocklist(one)
    for stage in (pipeline.compute_removals, pipeline.write_research, pipeline.write_research_safe):
        stage(one, NAME)
    for check in (checks.check_input, checks.check_research, checks.check_research_safe):
        check(one, NAME)
    per_shard = time.perf_counter() - started
    index_reused = pipeline.read_stats(one, "removals", NAME).index.reused

    pipeline.build_blocklist(settings)  # same lists: same version as `one`
    work, source_work = pipeline.Work(settings.work), pipeline.Work(one.work)
    names = [f"part-{i:05d}" for i in range(args.shards)]
    for name in names:
        _link(root / "shards" / f"{NAME}.parquet", bench / "shards" / f"{name}.parquet")
        _link(root / "sidecars" / f"{NAME}.parquet", bench / "sidecars" / f"{name}.parquet")
        for src, dst in zip(index.paths(one.work, NAME), index.paths(settings.work, name), strict=True):
            _link(Path(src), Path(dst))
        _link(Path(source_work.removals(NAME)), Path(work.removals(name)))
        for variant in ("research", "research-safe"):
            _link(Path(source_work.variant(variant, NAME)), Path(work.variant(variant, name)))
        for stage in ("removals", "research", "research-safe"):
            stats = json.loads(Path(source_work.stats(stage, NAME)).read_text()) | {"shard": name}
            stats |= pipeline.input_fingerprints(settings, name)  # the links' (the same file's)
            Path(work.stats(stage, name)).parent.mkdir(parents=True, exist_ok=True)
            Path(work.stats(stage, name)).write_text(json.dumps(stats))
    before = {name: hashlib.sha256(Path(work.variant("research", name)).read_bytes()).hexdigest() for name in names}

    partner = bench / "blocklists" / "new-partner"
    partner.mkdir()
    partner.joinpath("url_sha256.txt").write_text(
        "".join(hashlib.sha256(f"new-{i}.example/".encode()).hexdigest() + "\n" for i in range(args.change))
    )
    started = time.perf_counter()
    pipeline.build_blocklist(settings)
    rebuild = time.perf_counter() - started
    started = time.perf_counter()
    update = incremental.verify_untouched(settings, names)
    finding = time.perf_counter() - started
    after = {name: hashlib.sha256(Path(work.variant("research", name)).read_bytes()).hexdigest() for name in names}
    assert after == before, "an untouched shard's output changed"
    assert sorted(update["verified"]) == names, update["touched"]

    full = per_shard * args.shards
    print(f"{args.shards} shards of {args.rows:,} rows, a change of {args.change:,} entries")
    print(f"one shard, every stage and check: {per_shard:.1f} s (index {'reused' if index_reused else 'built'})")
    print(f"full rerun (N x one shard): {full:,.0f} s")
    print(f"rebuilding the blocklist: {rebuild:.1f} s")
    print(
        f"finding touched shards: {finding:.1f} s ({finding / args.shards:.2f} s per shard) = "
        f"{100 * finding / full:.2f}% of a full rerun; touched {len(update['touched'])},"
        f" verified {len(update['verified'])}; untouched outputs unchanged"
    )


if __name__ == "__main__":
    main()
