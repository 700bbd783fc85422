"""release: the shards that passed their checks, published as one versioned release with a manifest."""

import dagster as dg

from assets.metadata import check_result, from_stats
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from assets.variants import research_safe
from relaion_pipeline import checks
from relaion_pipeline import release as releases


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
    checks failed or that were matched against an older blocklist are held back and listed with the reason."""
    settings = relaion.settings()
    names = context.instance.get_dynamic_partitions(shard_partitions.name)
    manifest = releases.publish(settings, names)
    _, problems = releases.verify(manifest["path"])
    unchecked = [name for name in manifest["shards"] if not checks.passed(settings, name)[0]]
    outcome = checks.check_release(settings, problems, unchecked, manifest["version"])
    docs = checks.write_index(settings)
    for name, why in manifest["held_back"].items():
        context.log.warning(f"held back {name}: {why}")
    stats = {
        "version": manifest["version"],
        "path": manifest["path"],
        "blocklist_version": manifest["blocklist_version"],
        **manifest["totals"],
        "held_back_shards": manifest["held_back"],
        "seconds": manifest["seconds"],
        "validation_results": docs,
    }
    return dg.MaterializeResult(
        metadata=from_stats(stats),
        data_version=dg.DataVersion(manifest["version"]),
        check_results=[check_result(outcome, context.asset_key)],
    )
