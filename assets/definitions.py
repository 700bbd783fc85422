"""The code location: assets, checks, jobs, sensors and the settings resource (`dagster dev` loads `defs`)."""

from __future__ import annotations

import dagster as dg

from assets.alerts import build_alert_sensors
from assets.blocklist import blocklist
from assets.partitions import shard_partitions
from assets.release import release
from assets.removals import removals
from assets.resources import RelaionSettings, S3Storage
from assets.sensors import build_sensors
from assets.variants import research, research_safe
from relaion_pipeline.alerting.alerts import AlertSettings
from relaion_pipeline.core.settings import Settings

ALL_ASSETS = [blocklist, removals, research, research_safe, release]


def build_definitions(
    settings: Settings,
    s3: S3Storage | None = None,
    alert_settings: AlertSettings | None = None,
    shard_executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    """Definitions for one set of settings; the CLI and the UI build theirs the same way. Alert channels come
    from the `RELAION_ALERT_*` environment at every tick unless `alert_settings` is given; `shard_executor`
    runs the steps of `shard_job` elsewhere (e.g. on Celery workers, see `assets.celery_definitions`)."""
    settings.check_layout()  # the UI's code location fails to load, naming the setting, rather than ingest outputs
    blocklist_job = dg.define_asset_job("blocklist_job", selection=[blocklist], description="Rebuild the blocklist.")
    shard_job = dg.define_asset_job(
        "shard_job",
        selection=[removals, research, research_safe],
        partitions_def=shard_partitions,
        description="Match one shard and write its research and research-safe variants (with blocking checks).",
        executor_def=shard_executor,
    )
    release_job = dg.define_asset_job("release_job", selection=[release], description="Publish a release.")
    release_schedule = dg.ScheduleDefinition(
        job=release_job,
        cron_schedule="0 3 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Publish a release every night from the shards that passed their checks. Stopped until you"
        " start it: publishing is the operator's decision (relaion run publishes after each run).",
    )
    refresh_schedule = dg.ScheduleDefinition(
        name="refresh_schedule",
        job=blocklist_job,
        cron_schedule="0 2 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Rebuild the blocklist every night: a new version verifies the untouched shards and"
        " blocklist_version_sensor re-matches the touched ones; shard_sensor picks up new shards meanwhile."
        " Stopped until you start it: partner_list_sensor already rebuilds it when a list changes.",
    )
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[blocklist_job, shard_job, release_job],
        sensors=[*build_sensors(shard_job, blocklist_job), *build_alert_sensors(alert_settings)],
        schedules=[refresh_schedule, release_schedule],
        resources={"relaion": RelaionSettings.from_settings(settings, s3)},
    )


defs = build_definitions(Settings.from_env())
