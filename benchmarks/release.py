"""Publishing that scales (issue 21): what a release costs against the shards' own time, and a release of many
small shards.

Two measurements, each from fresh work and release folders:

- one demo shard of `--rows` rows through its stages and checks (the library calls a shard's run makes), then
  the release as the `release` asset makes it: `publish` and the release's own check. Prints the release's
  seconds as a share of the shard's (target: at most 10%).
- `--small` shards of `--small-rows` rows each through their stages (`--procs` processes at once), then the
  release of all of them, timed the same way (target: 1,000 shards in under a minute).

Each release is then published again with nothing changed (it writes nothing), and checked with `relaion
verify`'s full reading of every byte, for comparison.

    python benchmarks/release.py --rows 2000000 --small 1000 --small-rows 100 --dir /tmp/bench-release
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import time
from pathlib import Path

from compare import shard_path

from relaion_pipeline.core import shards
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import release, verification
from relaion_pipeline.stages import pipeline


def stage(settings: Settings, name: str) -> float:
    """One shard's stages and checks, as its run makes them; seconds."""
    started = time.perf_counter()
    shard_path(settings, name)
    return time.perf_counter() - started


def _stage_one(job: tuple[Settings, str]) -> float:
    return stage(*job)


def publish(settings: Settings) -> dict:
    """The release as the `release` asset makes it: publish, then its own check; seconds of each."""
    names = [shard.name for shard in shards.discover(settings.shards)]
    started = time.perf_counter()
    manifest = release.publish(settings, names)
    published = time.perf_counter()
    problems, unchecked = release.check(settings, manifest)
    assert not problems and not unchecked, (problems[:3], unchecked[:3])
    checked = time.perf_counter()
    return {
        "version": manifest["version"],
        "shards": len(manifest["shards"]),
        "publish": published - started,
        "check": checked - published,
        "total": checked - started,
    }


def measure(root: Path, count: int, rows: int, procs: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    demo.generate(root / "in", shards=count, rows=rows, seed=21)
    print(f"{count} shards of {rows:,} rows generated in {time.perf_counter() - started:.1f} s", flush=True)
    settings = Settings.layout(root / "in", root / "out")
    pipeline.build_blocklist(settings)
    names = [shard.name for shard in shards.discover(settings.shards)]
    started = time.perf_counter()
    if procs > 1:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            seconds = pool.map(_stage_one, [(settings, name) for name in names], chunksize=1)
    else:
        seconds = [stage(settings, name) for name in names]
    wall = time.perf_counter() - started
    print(
        f"stages: {wall:.1f} s wall for {count} shards ({procs} processes), {sum(seconds):.1f} s of shard time,"
        f" {sum(seconds) / count:.2f} s a shard",
        flush=True,
    )
    first = publish(settings)
    share = first["total"] / (sum(seconds) / count) / count
    print(
        f"release {first['version']}: {first['shards']} shards, publish {first['publish']:.2f} s + check"
        f" {first['check']:.2f} s = {first['total']:.2f} s; {first['total'] / count:.3f} s a shard,"
        f" {share:.1%} of a shard's own time",
        flush=True,
    )
    again = publish(settings)
    print(
        f"published again, nothing changed: {again['total']:.2f} s (the same version: {again['version']})", flush=True
    )
    started = time.perf_counter()
    _, problems = verification.verify(str(Path(settings.release) / first["version"]))
    assert not problems, problems[:3]
    print(f"relaion verify (every byte read): {time.perf_counter() - started:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the one large shard (0: skip it)")
    parser.add_argument("--small", type=int, default=1000, help="number of small shards (0: skip them)")
    parser.add_argument("--small-rows", type=int, default=100)
    parser.add_argument("--procs", type=int, default=2, help="processes staging the small shards")
    parser.add_argument("--dir", default="/tmp/bench-release")
    args = parser.parse_args()
    if args.rows:
        measure(Path(args.dir) / "large", 1, args.rows, 1)
    if args.small:
        measure(Path(args.dir) / "small", args.small, args.small_rows, args.procs)


if __name__ == "__main__":
    main()
