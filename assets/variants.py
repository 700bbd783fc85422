"""research and research_safe: the two published variants of a shard, each guarded by blocking checks."""

import base64

import dagster as dg

from assets.metadata import check_result, from_stats, progress_to
from assets.partitions import shard_partitions
from assets.removals import removals
from assets.resources import RelaionSettings
from relaion_pipeline.core import storage
from relaion_pipeline.publishing import plots
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


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
    with progress_to(context.log, settings.progress_seconds):
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
    with progress_to(context.log, settings.progress_seconds):
        stats = pipeline.write_research_safe(settings, context.partition_key)
        outcomes = checks.check_research_safe(settings, context.partition_key)
    metadata = from_stats(stats)
    if stats.score != "none":
        metadata |= punsafe_picture(settings, context.partition_key, stats.score)
    return dg.MaterializeResult(metadata=metadata, check_results=[check_result(o, context.asset_key) for o in outcomes])


def punsafe_picture(settings, name: str, column: str) -> dict:
    """The research shard's score distribution with both thresholds, as a PNG beside the outputs and inline."""
    if column.upper() == "NSFW":  # a tag, not a score: nothing to draw
        return {}
    work = pipeline.Work(settings.work)
    png = plots.punsafe_plot(name, plots.score_histogram(work.variant(pipeline.RESEARCH, name), column), settings)
    path = storage.join(settings.work, "plots", f"{name}.png")
    storage.write_bytes_atomic(png, path)
    inline = base64.b64encode(png).decode()
    return {
        "punsafe_plot": dg.MetadataValue.path(path),
        "punsafe_distribution": dg.MetadataValue.md(f"![punsafe distribution](data:image/png;base64,{inline})"),
    }
