"""blocklist: the partner lists parsed, validated, merged and versioned."""

import dagster as dg

from assets.metadata import from_stats, markdown_table
from assets.resources import RelaionSettings
from relaion_pipeline import pipeline


@dg.asset(
    group_name="relaion",
    kinds={"duckdb", "parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "blocklist"},
)
def blocklist(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """Every partner list (one folder per source) merged into one table of (kind, value, source, category),
    versioned by the digest of its normalized content. A list with a malformed line fails here, naming the
    file and line."""
    stats = pipeline.build_blocklist(relaion.settings())
    context.log.info(f"blocklist {stats['version']}: {stats['entries']:,} entries from {len(stats['sources'])} sources")
    metadata = from_stats(stats)
    metadata["entries_by_kind_table"] = markdown_table(stats["entries_by_kind"], ("kind", "entries"))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(stats["version"]))
