"""release: the shards that passed their checks, published as one versioned release with a manifest."""

import dagster as dg

from assets.metadata import check_result, from_stats, progress_to
from assets.resources import RelaionSettings
from assets.variants import research_safe
from relaion_pipeline.core import shards
from relaion_pipeline.publishing import release as releases
from relaion_pipeline.validation import checks


@dg.asset(
    deps=[research_safe],
    group_name="relaion",
    kinds={"parquet"},
    owners=["team:dataset-maintainers"],
    tags={"stage": "release"},
    check_specs=[
        dg.AssetCheckSpec(
            checks.RELEASE_MATCHES_FILES, asset="release", description=checks.WHY[checks.RELEASE_MATCHES_FILES]
        )
    ],
)
def release(context: dg.AssetExecutionContext, relaion: RelaionSettings) -> dg.MaterializeResult:
    """research/ and research-safe/ shards plus manifest.json (rows and sha256 per file, blocklist version,
    thresholds, code version), written under its own version folder and made visible last. Shards whose
    checks failed or that were matched against an older blocklist are held back and listed with the reason.

    It publishes the shards in the input now (a partition whose file was deleted has left, and the manifest
    says so); it fails, leaving `latest` as it is, rather than publish no shard or drop a shard of the current
    release that failed (unless allow_partial_release)."""
    settings = relaion.settings()
    names = [shard.name for shard in shards.discover(settings.shards)]
    with progress_to(context.log, settings.progress_seconds):
        manifest = releases.publish(settings, names)
        problems, unchecked = releases.check(settings, manifest)
    outcome = checks.check_release(settings, problems, unchecked, manifest["version"])
    docs = checks.write_index(settings)
    for path in manifest["mended"]:
        context.log.warning(f"put back {path}: it was no longer what the manifest lists (changed after publishing)")
    for name, why in manifest["held_back"].items():
        context.log.warning(f"held back {name}: {why}")
    for name, why in manifest["left"].items():
        context.log.warning(f"left {name}: {why}")
    stats = {
        "version": manifest["version"],
        "path": manifest["path"],
        "blocklist_version": manifest["blocklist_version"],
        **manifest["totals"],
        "held_back_shards": manifest["held_back"],
        "left_shards": manifest["left"],
        "allow_partial_release": manifest["settings"]["allow_partial_release"],
        "seconds": manifest["seconds"],
        "mended_files": manifest["mended"],
        "validation_results": docs,
    }
    return dg.MaterializeResult(
        metadata=from_stats(stats),
        data_version=dg.DataVersion(manifest["version"]),
        check_results=[check_result(outcome, context.asset_key)],
    )
