"""blocklist: the partner lists parsed, validated, merged and versioned."""

import dagster as dg

from assets.metadata import check_result, from_stats, markdown_table
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from relaion_pipeline import incremental
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


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
    file and line. Shards matched against an older version that no added or removed entry can touch are
    recorded as verified against this one, so only the touched shards are re-matched (see the sensors)."""
    settings = relaion.settings()
    stats = pipeline.build_blocklist(settings)
    outcomes = checks.check_blocklist(settings)
    context.log.info(f"blocklist {stats.version}: {stats.entries:,} entries from {len(stats.sources)} sources")
    metadata = from_stats(stats)
    metadata["entries_by_kind_table"] = markdown_table(stats.entries_by_kind, ("kind", "entries"))
    if all(o.success for o in outcomes):  # never vouch for shards against a list that failed its check
        update = incremental.verify_untouched(settings, context.instance.get_dynamic_partitions(shard_partitions.name))
        for name, why in update["touched"].items():
            context.log.info(f"shard {name!r} needs a re-match: {why}")
        context.log.info(
            f"{len(update['verified'])} shards verified against {stats.version} without rewriting,"
            f" {len(update['touched'])} to re-match ({update['seconds']:.1f} s)"
        )
        metadata["shards_verified_unchanged"] = len(update["verified"])
        metadata["shards_to_rematch"] = len(update["touched"])
        metadata["verify_seconds"] = update["seconds"]
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(stats.version),
        check_results=[check_result(o, context.asset_key) for o in outcomes],
    )
