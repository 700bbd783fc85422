"""removals: per shard, which rows match the blocklist or the keyword rule, by row key and hash only."""

import dagster as dg

from assets.blocklist import blocklist
from assets.metadata import check_result, from_stats, progress_to
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from relaion_pipeline import prepare
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


@dg.asset(
    partitions_def=shard_partitions,
    deps=[blocklist],
    group_name="relaion",
    kinds={"duckdb", "parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "match"},
    check_specs=[
        dg.AssetCheckSpec(
            checks.INPUT_WELL_FORMED, asset="removals", blocking=True, description=checks.WHY[checks.INPUT_WELL_FORMED]
        )
    ],
)
def removals(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """Rows of one shard to remove: URL lookup-expression hashes, domains and image hashes matched against
    the blocklist in DuckDB, PDQ hashes near-matched within each source's distance, plus the research keyword
    rule. One row per match: row key, kind, source, category, hash, scope and (PDQ) distance. Never a URL or
    a caption. Blocking check (Great Expectations): the input shard
    is well formed (URLs present, scores in range, sizes positive, row keys unique)."""
    settings = relaion.settings()
    if waiting := prepare.pending():
        context.log.info(
            f"compiling {len(waiting)} matching kernels first, once for this installation (~1-2 min on 2 cores);"
            " `relaion prepare` does it at install time"
        )
    with progress_to(context.log, settings.progress_seconds):
        stats = pipeline.compute_removals(settings, context.partition_key)
        outcomes = checks.check_input(settings, context.partition_key)
    for warning in stats.warnings:
        context.log.warning(warning)
    context.log.info(
        f"{context.partition_key}: {stats.rows_removed:,} of {stats.rows_in:,} rows to remove ({stats.seconds:.1f} s)"
    )
    return dg.MaterializeResult(
        metadata=from_stats(stats), check_results=[check_result(o, context.asset_key) for o in outcomes]
    )
