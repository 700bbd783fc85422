"""blocklist: the partner lists parsed, validated, merged and versioned."""

import dagster as dg

from assets.metadata import check_result, from_stats, markdown_table
from assets.resources import RelaionSettings
from relaion_pipeline import checks, pipeline


@dg.asset(
    group_name="relaion",
    kinds={"duckdb", "parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "blocklist"},
    check_specs=[
        dg.AssetCheckSpec(
            checks.BLOCKLIST_WELL_FORMED,
            asset="blocklist",
            blocking=True,
            description=checks.WHY[checks.BLOCKLIST_WELL_FORMED],
        )
    ],
)
def blocklist(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """Every partner list (one folder per source) merged into one table of (kind, value, source, category),
    versioned by the digest of its normalized content. A list with a malformed line fails here, naming the
    file and line."""
    settings = relaion.settings()
    stats = pipeline.build_blocklist(settings)
    outcomes = checks.check_blocklist(settings)
    context.log.info(f"blocklist {stats['version']}: {stats['entries']:,} entries from {len(stats['sources'])} sources")
    metadata = from_stats(stats)
    metadata["entries_by_kind_table"] = markdown_table(stats["entries_by_kind"], ("kind", "entries"))
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(stats["version"]),
        check_results=[check_result(o, context.asset_key) for o in outcomes],
    )
