"""What a release tells the world besides its shards: a dataset card, a transparency report, a removal list.

None of them holds a URL, a caption, or which row matched which list. The transparency report only counts
(by source, category, kind and shard). The removal list names the row keys a holder of an old copy must drop to
get research-safe, without reasons; following LAION's practice it is published only when the rows that matched
a list are a small share of it (default at most 1%), so that a listed key does not reveal a match.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core import shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import card, plots
from relaion_pipeline.publishing.manifest import REMOVAL_LIST
from relaion_pipeline.stages import removal_keys
from relaion_pipeline.stages.work import Work
from relaion_pipeline.status import Chain


def transparency(manifest: dict, ready: dict[str, Chain]) -> dict:
    """Counts of removed rows by source, category, kind and shard; rows dropped from research-safe. It does not
    name the release's version: the version is a digest of the manifest, which lists this report's sha256."""
    by = {"source": Counter(), "category": Counter(), "kind": Counter()}
    per_shard = {}
    for name, chain in ready.items():
        removals = chain.removals
        by["source"].update(removals.removed_by_source)
        by["category"].update(removals.removed_by_category)
        by["kind"].update(removals.removed_by_kind)
        per_shard[name] = {
            "rows_in": removals.rows_in,
            "rows_removed": removals.rows_removed,
            "rows_dropped_unsafe": chain.research_safe.rows_dropped_unsafe,
            "rows_research": chain.research.rows_out,
            "rows_research_safe": chain.research_safe.rows_out,
        }
    return {
        "blocklist_version": manifest["blocklist_version"],
        "thresholds": manifest["thresholds"],
        "removed_rows_by_source": dict(sorted(by["source"].items())),
        "removed_rows_by_category": dict(sorted(by["category"].items())),
        "removed_rows_by_kind": dict(sorted(by["kind"].items())),
        "shards": per_shard,
        "held_back": manifest["held_back"],
        "left": manifest["left"],
        "allow_partial_release": manifest["settings"]["allow_partial_release"],
        "totals": manifest["totals"],
    }


def _table(title: str, counts: dict) -> str:
    rows = "\n".join(f"| {key} | {value:,} |" for key, value in counts.items()) or "| (none) | 0 |"
    return f"| {title} | rows |\n|---|---:|\n{rows}\n"


def transparency_markdown(report: dict) -> str:
    totals = report["totals"]
    shard_rows = "\n".join(
        f"| {name} | {s['rows_in']:,} | {s['rows_removed']:,} | {s['rows_dropped_unsafe']:,} | "
        f"{s['rows_research']:,} | {s['rows_research_safe']:,} |"
        for name, s in report["shards"].items()
    )
    held = "\n".join(f"- `{name}`: {why}" for name, why in report["held_back"].items()) or "none"
    left = "\n".join(f"- `{name}`: {why}" for name, why in report["left"].items()) or "none"
    return f"""# Transparency report

The release whose `manifest.json` lists this file's sha256.

Blocklist version `{report["blocklist_version"]}`. Counts only: no URL, caption or row key of a removed row.
A row matching several lists is counted once per source, category and kind.

{totals["rows_in"]:,} rows in {totals["shards"]} shards; {totals["rows_removed"]:,} removed from research;
{totals["rows_research"]:,} rows in research, {totals["rows_research_safe"]:,} in research-safe.

## Removed rows by source
{_table("source", report["removed_rows_by_source"])}
## Removed rows by category
{_table("category", report["removed_rows_by_category"])}
## Removed rows by kind
{_table("kind", report["removed_rows_by_kind"])}
## Per shard
| shard | rows in | removed | unsafe (research-safe only) | research | research-safe |
|---|---:|---:|---:|---:|---:|
{shard_rows}

![Removals per shard](removals-per-shard.png)

## Held back
{held}

## Left since the previous release
{left}
"""


def removal_list(settings: Settings, ready: dict[str, Chain]) -> tuple[pa.Table, dict]:
    """Row hashes to drop for research-safe, and whether they may be published (list matches <= max share)."""
    hashes = [removal_keys.keys(settings, name) for name in ready]  # made by each shard's research-safe stage
    matched = sum(chain.research.rows_removed for chain in ready.values())
    values = np.unique(np.concatenate(hashes)) if hashes else np.array([], dtype=np.int64)
    share = matched / values.size if values.size else 0.0
    published = share <= settings.removal_list_max_match_share
    info = {
        "published": published,
        "keys": int(values.size),
        "reason": ""
        if published
        else (
            f"rows matching a list would be {share:.1%} of its keys, above the "
            f"{settings.removal_list_max_match_share:.1%} that keeps them hidden among neutral removals"
        ),
    }
    return pa.table({"hash": pa.array(values, pa.int64())}), info


def footers(settings: Settings, manifest: dict) -> dict[str, card.Footers]:
    """What the card needs of each shard's published files, from their footers."""
    work = Work(settings.work)
    return {
        name: card.Footers.read(
            {variant: shards.open_parquet(work.variant(variant, name)) for variant in card.VARIANTS}
        )
        for name in manifest["shards"]
    }


def documents(settings: Settings, manifest: dict, ready: dict[str, Chain]) -> tuple[dict[str, bytes], dict]:
    """Every document of a release by file name, and what became of the removal list."""
    table, info = removal_list(settings, ready)
    report = transparency(manifest, ready)
    docs = {
        "removals-per-shard.png": plots.removals_plot(report["shards"]),
        "README.md": card.dataset_card(manifest, settings, info, footers(settings, manifest)).encode(),
        "transparency.json": (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
        "transparency.md": transparency_markdown(report).encode(),
    }
    if info["published"]:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=storage.PARQUET_COMPRESSION)
        docs[REMOVAL_LIST] = sink.getvalue().to_pybytes()
    return docs, info
