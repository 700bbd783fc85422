"""Sensors that alert maintainers; what an alert says and where it goes is `relaion_pipeline.alerting.alerts`.

- `alert_on_failed_checks`: a check failed on a shard (a blocking one holds the shard back), and later the same
  check on the same shard passed again;
- `alert_on_failed_runs`: a run failed for another reason than a failed check (those are reported above);
- `alert_on_stale_blocklist`: no new blocklist version within RELAION_BLOCKLIST_MAX_AGE_HOURS, then a new one.

Each sensor keeps what it already reported in its cursor (JSON), so one failure gives exactly one alert however
many ticks, reruns or retries follow, and an alert a channel did not take is retried on that channel alone.
Channels are read from the environment on every tick, so fixing a setting needs no reload.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import dagster as dg

from assets import described
from assets.resources import RelaionSettings
from assets.variants import research, research_safe
from relaion_pipeline.alerting.alert_channels import Notifier
from relaion_pipeline.alerting.alerts import (
    Alert,
    AlertSettings,
    CheckRecord,
    blocklist_written,
    failure_counts,
    run_failed,
    track_blocklist,
    track_checks,
)
from relaion_pipeline.stages import pipeline

CHECK_ALERTS = "alert_on_failed_checks"
RUN_ALERTS = "alert_on_failed_runs"
BLOCKLIST_ALERTS = "alert_on_stale_blocklist"
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG = "dagster/retry_number"
FAILURE_REASON_TAG = "dagster/failure_reason"
CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"  # the step failed only because a blocking check did
RUN_LOOKBACK_SECONDS = 24 * 3600  # on its first tick the run sensor reports failures this recent
PAGE = 500


def _state(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {}


def _finish(context: dg.SensorEvaluationContext, settings: AlertSettings, alerts: list[Alert], old: dict, new: dict):
    """Send (or log) the alerts, retry what earlier ticks still owe, and keep everything in the cursor."""
    new["outbox"] = Notifier(settings, context.log).deliver(alerts, old.get("outbox", []))
    owed = len(new["outbox"])
    message = f"{len(alerts)} new alert(s)" if alerts else "nothing new to report"
    if owed:
        message += f"; {owed} alert(s) not yet delivered, retried on the next tick (see this tick's log)"
    return dg.SensorResult(skip_reason=message, cursor=json.dumps(new, sort_keys=True))


def _check_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetCheckKey]:
    """Every check of the code location (the variants' blocking checks when evaluated outside one)."""
    repository = context.repository_def
    keys = repository.asset_graph.asset_check_keys if repository else research.check_keys | research_safe.check_keys
    return sorted(keys, key=lambda key: key.to_user_string())


def _check_records(instance: dg.DagsterInstance, keys: list[dg.AssetCheckKey], floor: dict) -> list[CheckRecord]:
    """Check executions above each check's floor, newest pages first until the floor is reached."""
    runs: dict[str, dg.DagsterRun | None] = {}
    records = []
    for key in keys:
        label, cursor = key.to_user_string(), None
        while True:
            page = instance.event_log_storage.get_asset_check_execution_history(key, limit=PAGE, cursor=cursor)
            fresh = [r for r in page if r.id > floor.get(label, 0)]
            for execution in fresh:
                if execution.run_id not in runs:
                    runs[execution.run_id] = instance.get_run_by_id(execution.run_id)
                records.append(_check_record(label, execution, runs[execution.run_id]))
            if len(page) < PAGE or len(fresh) < len(page):
                break
            cursor = page[-1].id
    return records


def _check_record(label: str, execution, run: dg.DagsterRun | None) -> CheckRecord:
    status = execution.status.value
    evaluation = execution.event.asset_check_evaluation if execution.event and status != "PLANNED" else None
    if evaluation is None:  # planned: still to come while the run goes on, never once it has ended
        state = "PENDING" if run is not None and not run.is_finished else "ABANDONED"
    else:
        state = "PASSED" if evaluation.passed else "FAILED"
    failures = evaluation.metadata.get("failures") if evaluation is not None else None
    return CheckRecord(
        id=execution.id,
        check=label,
        shard=execution.partition
        or (evaluation.partition if evaluation else None)
        or (run.tags.get(PARTITION_TAG) if run else None)
        or "",
        run_id=execution.run_id,
        status=state,
        blocking=bool(evaluation.blocking) if evaluation is not None else False,
        counts=failure_counts(getattr(failures, "value", None)),
    )


def _run_alert(instance: dg.DagsterInstance, run_id: str, settings: AlertSettings) -> Alert | None:
    """The alert for a failed run, or None when a retry follows or only blocking checks failed it."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.tags.get(WILL_RETRY_TAG) == "true":
        return None
    steps = []
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = event.step_failure_data.error if event else None
        while error is not None and error.cause is not None:  # the user code's own error, not Dagster's wrapper
            error = error.cause
        steps.append((event.step_key if event else "", error.cls_name if error else ""))
    if steps and all(cls == CHECK_FAILED_ERROR for _, cls in steps):
        return None
    attempts = int(run.tags.get(RETRY_NUMBER_TAG, "0") or 0) + 1
    reason = run.tags.get(FAILURE_REASON_TAG, "")
    return run_failed(run.job_name, run_id, run.tags.get(PARTITION_TAG), steps, reason, attempts, settings)


def build_alert_sensors(settings: AlertSettings | None = None) -> list[dg.SensorDefinition]:
    """The three alert sensors; `settings` None reads `AlertSettings.from_env()` on every tick."""
    settings_for: Callable[[], AlertSettings] = (lambda: settings) if settings else AlertSettings.from_env
    running = dg.DefaultSensorStatus.RUNNING

    @described.sensor(name=CHECK_ALERTS, minimum_interval_seconds=60, default_status=running)
    def alert_on_failed_checks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Alerts once when a check fails on a shard (failing reruns add nothing), once when it passes again."""
        alert_settings = settings_for()
        state = _state(context.cursor)
        records = _check_records(context.instance, _check_keys(context), state.get("floor", {}))
        alerts, new = track_checks(state, records, alert_settings, bootstrap=context.cursor is None)
        return _finish(context, alert_settings, alerts, state, new)

    # Why not Dagster's `@run_failure_sensor`: it keeps its own cursor, and this sensor's cursor must also hold the
    # alerts a channel did not take (retried on that channel alone, `_finish`); a failure sensor cannot store
    # them. Its cursor here is what run_failure_sensor's is: the storage id of the last run failure seen.
    @described.sensor(name=RUN_ALERTS, minimum_interval_seconds=60, default_status=running)
    def alert_on_failed_runs(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Alerts once per failed run (after its last retry), except runs failed only by blocking checks."""
        alert_settings = settings_for()
        state = _state(context.cursor)
        failures, started = dg.DagsterEventType.RUN_FAILURE, time.time()
        if "after" in state:  # storage ids of run status changes only grow: nothing is seen twice
            records_filter = dg.RunStatusChangeRecordsFilter(failures, after_storage_id=state["after"])
            new = {"after": state["after"]}
        else:  # until the first failure is seen, look back from the first tick
            since = state.get("since", started - RUN_LOOKBACK_SECONDS)
            records_filter = dg.RunStatusChangeRecordsFilter(failures, after_timestamp=since)
            new = {"since": started}
        result = context.instance.fetch_run_status_changes(records_filter, limit=100, ascending=True)
        alerts = []
        for record in result.records:
            new = {"after": record.storage_id}
            alert = _run_alert(context.instance, record.run_id, alert_settings)
            alerts += [alert] if alert else []
        return _finish(context, alert_settings, alerts, state, new)

    @described.sensor(name=BLOCKLIST_ALERTS, minimum_interval_seconds=600, default_status=running)
    def alert_on_stale_blocklist(context: dg.SensorEvaluationContext, relaion: RelaionSettings) -> dg.SensorResult:
        """Alerts once when no new blocklist version arrived for too long, once when a new version arrives."""
        alert_settings = settings_for()
        state = _state(context.cursor)
        current = blocklist_written(pipeline.Work(relaion.settings().work).blocklist_dir)
        alerts, new = track_blocklist(state, current, time.time(), alert_settings)
        return _finish(context, alert_settings, alerts, state, new)

    return [alert_on_failed_checks, alert_on_failed_runs, alert_on_stale_blocklist]
