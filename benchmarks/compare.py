"""The pipeline's per-shard path beside the baselines of issue 5, in one run, with ratios.

    python benchmarks/compare.py --rows 2000000 [--dir /tmp/relaion-bench]

On one generated LAION-like shard (the project's generator, once per --dir) and a 1M-entry sha256 list:
- reference: one hand-written DuckDB query that hashes each raw URL with sha256, anti-joins the list and
  writes research (all kept rows) and research-safe (punsafe < threshold) as zstd parquet;
- pandas: the same job with pandas and hashlib;
- per-row Python: datatrove's own `URLFilter` (with its integrated lists and the public suffix list that
  tldextract bundles, offline; no hashing, no writes; `pip install -e '.[dev,bench]'`), a lighter imitation
  of it (parse, two set lookups), as URLs per second; and per-row Python doing what the index build does
  (canonical form, every lookup expression and host suffix hashed), beside the compiled build's rate;
- pipeline: every stage of one shard (removals with a fresh lookup-hash index: canonicalization and up to 30
  lookup expressions per URL, checks, both variants), and again as a new list version would run it (index
  reused); first on the reference's own job (the same 1M-entry sha256 list as `url_sha256` entries, no
  image-hash sidecar), then on the demo's job (its lists of every kind, exact and PDQ image hashes through
  the sidecar, md5 prefixes too).
Each runs in its own forked process; wall time and that process's peak RSS are reported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from stages import in_child

from relaion_pipeline.core import storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.match import index
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks, quality

LIST_ENTRIES = 1_000_000
NAME = "joined/part-00000"


def _list_file(root: Path, urls: list[str]) -> Path:
    """A 1M-entry sha256 list: hashes of 1,000 URLs of the shard plus random digests."""
    path = root / "reference-list.parquet"
    if not path.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        planted = [hashlib.sha256(u.encode()).hexdigest() for u in urls[:: max(1, len(urls) // 1000)][:1000]]
        random = [bytes(r).hex() for r in rng.integers(0, 256, size=(LIST_ENTRIES - len(planted), 32), dtype=np.uint8)]
        pq.write_table(pa.table({"value": planted + random}), path)
    return path


def reference(shard: str, list_path: Path, out: Path, threshold: float) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(
        f"""CREATE TEMP TABLE kept AS
        SELECT s.* FROM read_parquet('{shard}') s ANTI JOIN read_parquet('{list_path}') b
        ON sha256(s.URL) = b.value"""
    )
    con.execute(f"COPY kept TO '{out / 'ref-research.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
    con.execute(
        f"COPY (SELECT * FROM kept WHERE punsafe < {threshold}) TO '{out / 'ref-safe.parquet'}' "
        "(FORMAT parquet, COMPRESSION zstd)"
    )


def pandas_job(shard: str, list_path: Path, out: Path, threshold: float) -> None:
    import pandas as pd

    frame = pd.read_parquet(shard)
    listed = set(pd.read_parquet(list_path)["value"])
    hashed = [hashlib.sha256(u.encode()).hexdigest() if u is not None else "" for u in frame["URL"]]
    kept = frame[[h not in listed for h in hashed]]
    kept.to_parquet(out / "pd-research.parquet", compression="zstd")
    kept[kept["punsafe"] < threshold].to_parquet(out / "pd-safe.parquet", compression="zstd")


def per_row_datatrove(urls: list[str]) -> float | None:
    """URLs per second of datatrove's URLFilter on one document per URL (None when datatrove is not
    installed). tldextract is given its bundled public suffix list: nothing else is reachable offline."""
    try:
        import tldextract
        from datatrove.data import Document
        from datatrove.pipeline.filters.url_filter import URLFilter
    except ImportError:
        return None
    check = URLFilter()
    check.tldextractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    documents = [Document(text="", id=str(i), metadata={"url": u}) for i, u in enumerate(urls) if u]
    if not documents:
        return None
    check.filter(documents[0])  # extracts the integrated lists once
    started = time.perf_counter()
    for document in documents:
        check.filter(document)
    return len(documents) / (time.perf_counter() - started)


def per_row(urls: list[str]) -> float:
    """URLs per second of a lighter, datatrove-URLFilter-like per-row Python check."""
    domains = {f"blocked-{i}.example" for i in range(10_000)}
    exact = {f"http://blocked-{i}.example/x.jpg" for i in range(10_000)}
    started = time.perf_counter()
    hits = 0
    for url in urls:
        if url is None:
            continue
        host = urlparse(url).netloc.lower()
        parts = host.split(".")
        if url in exact or any(".".join(parts[i:]) in domains for i in range(len(parts) - 1)):
            hits += 1
    return len(urls) / (time.perf_counter() - started)


def shard_path(settings: Settings, name: str = NAME) -> None:
    """Every per-shard stage and check, as the Dagster assets run them."""
    pipeline.compute_removals(settings, name)
    checks.check_input(settings, name)
    pipeline.write_research(settings, name)
    checks.check_research(settings, name)
    pipeline.write_research_safe(settings, name)
    checks.check_research_safe(settings, name)


def _same_job_settings(root: Path, list_path: Path, urls: list[str]) -> Settings:
    """The reference's job for the pipeline: one partner's url_sha256 list of the reference's 1M values, its
    1,000 planted hashes of raw URLs replaced by those of the same URLs' canonical form; no sidecar."""
    lists = root / "reference-job" / "blocklists" / "partner"
    if not (lists / "url_sha256.parquet").exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        from relaion_pipeline.canonical import urls as canonical

        lists.mkdir(parents=True)
        planted = urls[:: max(1, len(urls) // 1000)][:1000]
        expressions = [canonical.lookup_expressions(u) for u in planted]
        values = [hashlib.sha256(e[0].encode()).hexdigest() for e in expressions if e]
        values += pq.read_table(list_path).column("value").to_pylist()[len(planted) :]
        kinds = pa.array(["url_sha256"] * len(values))
        pq.write_table(pa.table({"kind": kinds, "value": values}), lists / "url_sha256.parquet")
    out = root / "reference-job"
    return Settings.layout(root, out, blocklists=str(lists.parent), sidecars=str(out / "no-sidecars"))


def per_row_same_work(urls: list[str]) -> float:
    """URLs per second of per-row Python doing the pipeline's work on each URL: the reference canonicalization,
    every lookup expression and host suffix hashed with sha256 and md5 (`index.reference`)."""
    started = time.perf_counter()
    for url in urls:
        index.reference(url)
    return len(urls) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", default="/tmp/relaion-bench")
    args = parser.parse_args()
    root = Path(args.dir) / f"rows-{args.rows}"
    if not (root / "shards").exists():
        demo.generate(root, shards=1, rows=args.rows, seed=0)
    settings = Settings.layout(root, root)
    shard = str(root / "shards" / f"{NAME}.parquet")
    import pyarrow.parquet as pq

    urls = pq.read_table(shard, columns=["URL"]).column("URL").to_pylist()
    list_path = _list_file(root, urls)
    out = root / "baselines"
    out.mkdir(exist_ok=True)
    threshold = settings.safe_threshold
    quality.expectations()  # imported once per process, as in a long-lived worker

    results = {}
    results["reference"] = in_child(lambda: reference(shard, list_path, out, threshold))
    results["pandas"] = in_child(lambda: pandas_job(shard, list_path, out, threshold))
    datatrove_rate = per_row_datatrove(urls[:200_000])
    light_rate = per_row(urls[:500_000])
    rate = datatrove_rate or light_rate
    same_work_rate = per_row_same_work(urls[:50_000])
    same_job = _same_job_settings(root, list_path, urls)
    for label, run_settings in (("reference's job", same_job), ("demo job", settings)):
        pipeline.build_blocklist(run_settings)
        index.forget(run_settings.work, NAME)
        results[f"pipeline, {label}, fresh index"] = in_child(lambda s=run_settings: shard_path(s))
        results[f"pipeline, {label}, index reused"] = in_child(lambda s=run_settings: shard_path(s))
    base = results["reference"][0]
    print(f"{args.rows:,} rows, list of {LIST_ENTRIES:,} entries, {os.cpu_count()} cores")
    print(f"{'job':<44} {'seconds':>8} {'x reference':>12} {'rows/s':>11} {'peak RSS MiB':>13}")
    for label, (seconds, peak) in results.items():
        print(f"{label:<44} {seconds:>8.2f} {seconds / base:>12.2f} {args.rows / seconds:>11,.0f} {peak:>13,.0f}")
    if datatrove_rate is None:
        print("datatrove is not installed (pip install -e '.[dev,bench]'): the imitation is the per-row baseline")
    else:
        print(f"per-row Python, datatrove's URLFilter (no hashing, no writes): {datatrove_rate:,.0f} URLs/s")
    print(f"per-row Python, a lighter URLFilter-like check (parse, two set lookups): {light_rate:,.0f} URLs/s")
    print(
        f"per-row Python doing the index's work (canonical form, every expression hashed): {same_work_rate:,.0f} URLs/s"
    )
    index_seconds = storage.read_json(index.paths(settings.work, NAME)[1])["extra"]["seconds"]  # its cache record
    print(f"the compiled index build: {args.rows / index_seconds:,.0f} URLs/s ({index_seconds:.2f} s)")
    for label in (label for label in results if label.startswith("pipeline")):
        speedup = (args.rows / results[label][0]) / rate
        print(f"{label}: {speedup:.1f}x the per-row Python rate ({'datatrove' if datatrove_rate else 'imitation'})")


if __name__ == "__main__":
    main()
