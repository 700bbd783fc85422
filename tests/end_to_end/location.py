"""Code locations for the tests that run a real `dagster-daemon`: the project's own definitions (from RELAION_*),
changed only where a test must not wait for real time or pay a step process's imports again and again.

- `queue_only`: `assets.definitions` without its sensors and schedules, and `shard_job`'s steps executed in the
  run's own process, as `relaion run` executes them (the multiprocess executor starts a process per step, ~5-10 s
  of imports each on 2 cores). Only what a backfill starts runs.
- `deployment`: `assets.celery_definitions` (shard_job's steps on Celery workers), every sensor as shipped, a
  copy of refresh_schedule that fires every minute and is running from the start, and the other jobs' steps in
  their run's process.
"""

import dagster as dg

from assets import celery_definitions
from assets.definitions import build_definitions
from relaion_pipeline.core.settings import Settings

_plain = build_definitions(Settings.from_env(), shard_executor=dg.in_process_executor)
queue_only = dg.Definitions(assets=_plain.assets, jobs=_plain.jobs, resources=_plain.resources)

_refresh = celery_definitions.defs.resolve_schedule_def("refresh_schedule")
deployment = dg.Definitions.merge(
    celery_definitions.defs,
    dg.Definitions(
        schedules=[
            dg.ScheduleDefinition(
                name="refresh_every_minute",
                job=next(job for job in celery_definitions.defs.jobs if job.name == _refresh.job_name),
                cron_schedule="* * * * *",
                default_status=dg.DefaultScheduleStatus.RUNNING,
            )
        ],
        executor=dg.in_process_executor,  # for the jobs that name none: shard_job keeps Celery
    ),
)
