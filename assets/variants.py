"""research and research_safe: the two published variants of a shard, each guarded by blocking checks."""

import dagster as dg

from assets.metadata import check_result, from_stats
from assets.partitions import shard_partitions
from assets.removals import removals
from assets.resources import RelaionSettings
from relaion_pipeline import checks, pipeline


def _specs(asset_name: str, variant: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_name, blocking=True, description=checks.WHY[name])
        for name in checks.BLOCKING[variant]
    ]


@dg.asset(
    partitions_def=shard_partitions,
    deps=[removals],
    group_name="relaion",
    kinds={"parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "variant"},
    check_specs=_specs("research", pipeline.RESEARCH),
)
def research(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """The shard minus every removed row, with exactly the input's columns, types and row order.
    Blocking checks (Great Expectations): no row matches the blocklist; rows in = removed + out."""
    settings = relaion.settings()
    stats = pipeline.write_research(settings, context.partition_key)
    outcomes = checks.check_research(settings, context.partition_key)
    return dg.MaterializeResult(
        metadata=from_stats(stats), check_results=[check_result(o, context.asset_key) for o in outcomes]
    )


@dg.asset(
    partitions_def=shard_partitions,
    deps=[research],
    group_name="relaion",
    kinds={"parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "variant"},
    check_specs=_specs("research_safe", pipeline.RESEARCH_SAFE),
)
def research_safe(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """research minus rows whose punsafe is above the safe threshold (shards without punsafe: the NSFW tag).
    Blocking checks (Great Expectations): no score above the threshold; rows add up."""
    settings = relaion.settings()
    stats = pipeline.write_research_safe(settings, context.partition_key)
    outcomes = checks.check_research_safe(settings, context.partition_key)
    return dg.MaterializeResult(
        metadata=from_stats(stats), check_results=[check_result(o, context.asset_key) for o in outcomes]
    )
