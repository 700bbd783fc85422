"""removals: per shard, which rows match the blocklist or the keyword rule, by row key and hash only."""

import dagster as dg

from assets.blocklist import blocklist
from assets.metadata import from_stats
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from relaion_pipeline import pipeline


@dg.asset(
    partitions_def=shard_partitions,
    deps=[blocklist],
    group_name="relaion",
    kinds={"duckdb", "parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "match"},
)
def removals(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """Rows of one shard to remove: URL lookup-expression hashes, domains and image hashes matched against
    the blocklist in DuckDB, plus the research keyword rule. One row per match: row key, kind, source,
    category, hash and scope. Never a URL or a caption."""
    stats = pipeline.compute_removals(relaion.settings(), context.partition_key)
    context.log.info(
        f"{context.partition_key}: {stats['rows_removed']:,} of {stats['rows_in']:,} rows to remove"
        f" ({stats['seconds']:.1f} s)"
    )
    return dg.MaterializeResult(metadata=from_stats(stats))
