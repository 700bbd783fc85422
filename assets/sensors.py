"""Sensors: new shards become partitions and get processed; changed partner lists rebuild the blocklist,
and a new blocklist version re-runs the shards its changed entries touch (the blocklist asset records the
others as verified against it)."""

from __future__ import annotations

import hashlib
import json
import time

import dagster as dg

from assets import described
from assets.blocklist import blocklist
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from relaion_pipeline import status
from relaion_pipeline.core import shards
from relaion_pipeline.lists import blocklists
from relaion_pipeline.stages import pipeline

NOT_STARTED = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
GOING = (*NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


def coming(instance: dg.DagsterInstance, job_name: str, since: float) -> set[str]:
    """Partitions with a run of `job_name` that will match against the list version current at `since`: one
    not started yet (it reads the list when its step runs), or created since then. Another sensor's request for
    them would run the same shard twice (the shard sensor's run of a new shard and the first list version's)."""
    found = set()
    for record in instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=list(GOING))):
        run = record.dagster_run
        if run.status in NOT_STARTED or record.create_timestamp.timestamp() >= since:
            found.add(run.tags.get("dagster/partition"))
    return found


def build_sensors(shard_job, blocklist_job) -> list:
    @described.sensor(job=shard_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def shard_sensor(context: dg.SensorEvaluationContext, relaion: RelaionSettings) -> dg.SensorResult:
        """Adds a partition for every new shard under the shard location and runs it."""
        found = [s.name for s in shards.discover(relaion.settings().shards)]
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        new = [name for name in found if name not in known]
        if not new:
            return dg.SensorResult(skip_reason=f"no new shards ({len(found)} known)")
        return dg.SensorResult(
            dynamic_partitions_requests=[shard_partitions.build_add_request(new)],
            run_requests=[dg.RunRequest(partition_key=name, run_key=f"new-shard:{name}") for name in new],
        )

    @described.sensor(job=blocklist_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def partner_list_sensor(context: dg.SensorEvaluationContext, relaion: RelaionSettings):
        """Rebuilds the blocklist when any partner-list file is added, removed or changed since the last build."""
        settings = relaion.settings()
        fingerprint = blocklists.fingerprint(settings.blocklists)
        pointer = blocklists.read_pointer(pipeline.Work(settings.work).blocklist_dir) or {}
        if not fingerprint or fingerprint in (context.cursor, pointer.get("lists_fingerprint")):
            return dg.SkipReason("partner lists unchanged since the blocklist was built")
        context.update_cursor(fingerprint)
        return dg.RunRequest(run_key=f"lists:{fingerprint[:16]}")

    @described.sensor(job=shard_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def blocklist_version_sensor(context: dg.SensorEvaluationContext, relaion: RelaionSettings):
        """Re-matches the shards that were matched against another blocklist version after it is rebuilt, once
        each. A shard with a run still to start (a new shard's, say) is left to that run, and asked for at a
        later tick if the run ends without matching it (cancelled, or never launched)."""
        event = context.instance.get_latest_materialization_event(blocklist.key)
        if event is None:
            return dg.SkipReason("no blocklist built yet")
        version = event.asset_materialization.metadata.get("version")
        version = version.value if version is not None else event.run_id
        cursor = json.loads(context.cursor) if context.cursor else {}
        asked = set(cursor.get("asked", [])) if cursor.get("version") == version else set()
        names = context.instance.get_dynamic_partitions(shard_partitions.name)
        waiting = coming(context.instance, shard_job.name, event.timestamp)
        requests = []
        for name in status.needs_matching(relaion.settings(), names):
            if name not in waiting and name not in asked:
                requests.append(dg.RunRequest(partition_key=name, run_key=f"blocklist:{version}:{name}"))
                asked.add(name)
        context.update_cursor(json.dumps({"version": version, "asked": sorted(asked)}))
        return requests or dg.SkipReason(f"every shard is matched against blocklist {version} or has a run coming")

    @described.sensor(job=shard_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
    def changed_shard_sensor(context: dg.SensorEvaluationContext, relaion: RelaionSettings):
        """Re-runs a shard whose file or image-hash sidecar was replaced since its removals were computed (unless
        a run of it has yet to start: that one reads the new file)."""
        names = context.instance.get_dynamic_partitions(shard_partitions.name)
        waiting = coming(context.instance, shard_job.name, time.time())
        for name, current in status.inputs_replaced(relaion.settings(), names).items():
            if name in waiting:
                continue
            digest = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
            yield dg.RunRequest(partition_key=name, run_key=f"changed:{name}:{digest}")

    return [shard_sensor, partner_list_sensor, blocklist_version_sensor, changed_shard_sensor]
