"""The code location for running shards on Celery workers (dagster-celery, a Redis broker).

    RELAION_CELERY_BROKER=redis://host:6379/0 dagster job execute -m assets.celery_definitions -j shard_job \
        --tags '{"dagster/partition": "<shard>"}'

Each step of `shard_job` (removals, research, research_safe) becomes a Celery task that a worker started with
`dagster-celery worker start -A dagster_celery.app -y <config>` executes (the config names the same broker:
`execution: {config: {broker: ..., backend: ...}}`). Workers load this module, so they need this repository,
the same environment variables (RELAION_*, AWS_*) and the same Dagster instance (DAGSTER_HOME; Postgres when
they are on other machines). Everything else is `assets.definitions`.
"""

from __future__ import annotations

import os

from dagster_celery import celery_executor

from assets.definitions import build_definitions
from relaion_pipeline.core.settings import Settings


def executor():
    broker = os.environ.get("RELAION_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    backend = os.environ.get("RELAION_CELERY_BACKEND", broker)
    return celery_executor.configured({"broker": broker, "backend": backend}, name="relaion_celery")


defs = build_definitions(Settings.from_env(), shard_executor=executor())
