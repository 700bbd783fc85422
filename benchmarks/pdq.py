"""PDQ near matching and image hashing, measured side by side in one run (issue 8).

    python benchmarks/pdq.py --entries 1000000 --queries 100000

1. Near matching of `--queries` sidecar hashes against a list of `--entries` PDQ hashes (distance 31):
   the pipeline's compiled multi-index, the same multi-index as one DuckDB join, numpy brute force, FAISS IndexBinaryFlat (brute force in C++) and
   FAISS IndexBinaryMultiHash (16 x 16-bit hash tables, one flipped bit: Meta's HMA's index). The slow ones run
   on a sample of the queries; every method's answer on that sample must be the same.
2. The pipeline's `removals` stage on a shard of `--stage-rows` rows whose sidecar holds a PDQ hash per row,
   against that list (time and peak RSS of the stage's process).
3. `relaion hash-images` throughput over generated downloads (`--images` pictures, all cores).
4. Robustness: how many edited copies stay within 31 bits of their original, and how many pairs of unrelated
   pictures fall within it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from stages import in_child

from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo_images
from relaion_pipeline.lists import pdq
from relaion_pipeline.match import images
from relaion_pipeline.match.pdq_index import PdqIndex
from relaion_pipeline.stages import pipeline


def _random_hashes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def _hex(rows: np.ndarray) -> list[str]:
    raw = rows.tobytes().hex()
    return [raw[i : i + 64] for i in range(0, len(raw), 64)]


def _plant(rng, queries: np.ndarray, entries: np.ndarray, share: float) -> None:
    """Turn `share` of the queries into copies of list entries with 0-40 flipped bits."""
    for i in range(int(len(queries) * share)):
        copy = entries[rng.integers(len(entries))].copy()
        for bit in rng.choice(256, int(rng.integers(0, 41)), replace=False):
            copy[bit // 8] ^= np.uint8(1 << (7 - bit % 8))
        queries[i] = copy


def matching(entries: np.ndarray, queries: np.ndarray, sample: int) -> list[dict]:
    import faiss

    results = []
    con = duckdb.connect()
    con.register("e", pa.table({"eid": np.arange(len(entries)), "pdq": _hex(entries),
                                "distance": np.full(len(entries), 31, np.int32)}))  # fmt: skip
    con.register("q", pa.table({"qid": np.arange(len(queries)), "pdq": _hex(queries)}))
    started = time.perf_counter()
    index = PdqIndex.build(_hex(entries), np.full(len(entries), 31, np.int16))
    build = time.perf_counter() - started
    index.search(pdq.to_words(_hex(queries[:10])))  # compiled (or loaded from numba's cache) once per process
    started = time.perf_counter()
    rows, hits, _ = index.search(pdq.to_words(_hex(queries)))
    results.append({"method": f"compiled multi-index, the pipeline (+{build:.1f} s to build)",
                    "queries": len(queries), "seconds": time.perf_counter() - started})  # fmt: skip
    started = time.perf_counter()
    found = con.sql(pdq.near_matches_sql("SELECT * FROM q", "SELECT * FROM e", 31)).fetchall()
    seconds = time.perf_counter() - started
    results.append({"method": "DuckDB multi-index join", "queries": len(queries), "seconds": seconds})
    assert {(q, e) for q, e, _ in found} == set(zip(rows.tolist(), hits.tolist(), strict=True)), "kernel != DuckDB"
    reference = {(q, e) for q, e, _ in found if q < sample}

    words_e, words_q = pdq.to_words(_hex(entries)), pdq.to_words(_hex(queries[:sample]))
    started = time.perf_counter()
    brute = pdq.brute_force(words_q, words_e, np.full(len(entries), 31, np.int32))
    results.append({"method": "numpy brute force", "queries": sample, "seconds": time.perf_counter() - started})
    assert {(q, e) for q, e, _ in brute} == reference, "numpy brute force disagrees"

    flat = faiss.IndexBinaryFlat(256)
    flat.add(entries)
    started = time.perf_counter()
    limits, _, ids = flat.range_search(queries[:sample], 32)
    results.append({"method": "FAISS IndexBinaryFlat", "queries": sample, "seconds": time.perf_counter() - started})
    assert {(q, int(e)) for q in range(sample) for e in ids[limits[q] : limits[q + 1]]} == reference

    started = time.perf_counter()
    multi = faiss.IndexBinaryMultiHash(256, 16, 16)
    multi.nflip = 1
    multi.add(entries)
    build = time.perf_counter() - started
    started = time.perf_counter()
    limits, _, ids = multi.range_search(queries[:sample], 32)
    results.append({"method": f"FAISS IndexBinaryMultiHash (+{build:.1f} s to build)", "queries": sample,
                    "seconds": time.perf_counter() - started})  # fmt: skip
    assert {(q, int(e)) for q in range(sample) for e in ids[limits[q] : limits[q + 1]]} == reference
    for r in results:
        r["per_second"] = r["queries"] / r["seconds"]
    return results, len(found)


def pipeline_stage(entries: np.ndarray, rows: int, root: Path) -> dict:
    """The `removals` stage of a shard of `rows` rows whose sidecar has a PDQ hash on every row (1% of them
    near a list entry), against the list; in a forked process, for its own peak RSS."""
    rng = np.random.default_rng(1)
    queries = _random_hashes(rng, rows)
    _plant(rng, queries, entries, 0.01)
    (root / "in" / "shards").mkdir(parents=True)
    (root / "in" / "sidecars").mkdir()
    (root / "in" / "blocklists" / "partner").mkdir(parents=True)
    keys = pa.array([f"k{i}" for i in range(rows)])
    urls = pa.array([f"http://h{i}.example.com/i.jpg" for i in range(rows)])
    pq.write_table(pa.table({"key": keys, "url": urls, "caption": keys}), root / "in" / "shards" / "s.parquet")
    sidecar = pa.table({"key": keys, "pdq": _hex(queries), "pdq_quality": np.full(rows, 90, np.int16)})
    pq.write_table(sidecar, root / "in" / "sidecars" / "s.parquet")
    del queries, sidecar
    (root / "in" / "blocklists" / "partner" / "pdq.txt").write_text("\n".join(_hex(entries)) + "\n")
    settings = Settings.layout(root / "in", root / "out")
    blocklist, blocklist_rss = in_child(lambda: pipeline.build_blocklist(settings))
    seconds, rss = in_child(lambda: pipeline.compute_removals(settings, "s"))
    again, again_rss = in_child(lambda: pipeline.compute_removals(settings, "s"))  # the URL index exists now
    stats = pipeline.read_stats(settings, "removals", "s")
    return {"rows": rows, "blocklist_seconds": round(blocklist, 2), "removals_seconds": round(seconds, 2),
            "removals_peak_rss_mib": round(rss), "removals_with_url_index_seconds": round(again, 2),
            "removals_with_url_index_peak_rss_mib": round(again_rss), "rows_removed": stats.rows_removed,
            "rows_per_second_with_url_index": round(rows / again)}  # fmt: skip


def hashing(count: int, root: Path) -> dict:
    samples = [(f"http://p{i}.example.org/{i}.jpg", demo_images.encode(demo_images.picture(i))) for i in range(count)]
    demo_images.write_downloads(root / "downloads", samples, per_tar=max(1, count // 8))
    started = time.perf_counter()
    results = images.hash_tars(str(root / "downloads"), str(root / "sidecars"), progress=lambda line: None)
    seconds = time.perf_counter() - started
    return {"images": sum(r.images for r in results), "seconds": seconds, "per_second": count / seconds}


def robustness(count: int) -> dict:
    originals = [demo_images.picture(10_000 + i) for i in range(count)]
    words = pdq.to_words([images.pdq_of(p)[0] for p in originals])
    rates = {}
    for edit, transform in {**demo_images.TRANSFORMS, **demo_images.BEYOND}.items():
        copies = pdq.to_words([images.pdq_of(transform(p))[0] for p in originals])
        distance = sum(np.bitwise_count(words[:, w] ^ copies[:, w]).astype(int) for w in range(4))
        rates[edit] = {"matched": float(np.mean(distance <= 31)), "median_bits": float(np.median(distance))}
    pairs = pdq.brute_force(words, words, np.full(count, 31, np.int32))
    rates["unrelated pairs within 31 bits"] = (len(pairs) - count) / (count * (count - 1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2_000, help="queries given to the slow methods")
    parser.add_argument("--stage-rows", type=int, default=2_000_000, help="rows of the shard of the removals run")
    parser.add_argument("--images", type=int, default=4_000)
    parser.add_argument("--pictures", type=int, default=300, help="pictures for the robustness rates")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    entries, queries = _random_hashes(rng, args.entries), _random_hashes(rng, args.queries)
    _plant(rng, queries, entries, 0.01)
    with tempfile.TemporaryDirectory() as scratch:  # the forking parts first: FAISS's OpenMP forbids fork after it
        stage = pipeline_stage(entries, args.stage_rows, Path(scratch) / "stage")
        hashed = hashing(args.images, Path(scratch) / "images")
    results, found = matching(entries, queries, min(args.sample, args.queries))
    print(f"| near matching, {args.entries:,} entries, distance 31 | queries | seconds | hashes/s |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['queries']:,} | {r['seconds']:.2f} | {r['per_second']:,.0f} |")
    print(f"({found:,} pairs found for the {args.queries:,} queries; every method agrees on the sample)")
    print(f"\nremovals stage: {json.dumps(stage)}")
    print(f"hash-images: {json.dumps(hashed)}")
    print(f"robustness: {json.dumps(robustness(args.pictures), indent=1)}")


if __name__ == "__main__":
    main()
