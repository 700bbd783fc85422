"""docs/deployment.md's instance, for real (issue 21): its dagster.yaml (Postgres storage, queued runs, one run
per shard) read from the document itself, against a PostgreSQL server started here on 127.0.0.1, a real
`dagster-daemon`, a real redis-server and a dagster-celery worker executing shard_job's steps. The shard sensor
adds every shard as a partition and runs it, a backfill of every shard goes through the queue within its limits,
and a schedule ticks.

Two things differ from the document, because they cannot run here: Kubernetes (runs start as processes of this
machine, Dagster's DefaultRunLauncher, instead of K8sRunLauncher's pods) and the size of the queue
(max_concurrent_runs: 3 instead of 64 pods). The code location is the project's Celery one with a
copy of refresh_schedule that fires every minute (tests/end_to_end/location.py)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess

import dagster as dg
import pytest
import yaml
from conftest import BLOCKED_URL, relaion_shard
from services import (
    BIN,
    POSTGRES_BIN,
    REDIS,
    REPO,
    daemon,
    finished,
    free_port,
    postgres,
    runs_overlapping,
    start,
    stop,
    wait_for,
    why_failed,
    workspace,
)

from assets.definitions import build_definitions
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import pipeline

pytestmark = pytest.mark.skipif(
    REDIS is None or not (POSTGRES_BIN / "postgres").exists(),
    reason=f"needs redis-server and {POSTGRES_BIN}/postgres (apt-get install redis-server postgresql; .ci/run does)",
)

SHARDS = ["part-0", "part-1"]
ROWS = [(BLOCKED_URL, "blocked", 0.1), ("http://ok.example/a.jpg", "a cat", 0.2), ("http://ok.example/b", "b", 0.9)]
# max_concurrent_runs here (the document's 64 is one 2-core pod per run): one more than there are shards, so that
# only the one-run-per-shard limit keeps a shard's second run (the backfill's) from starting beside its first
LIMIT = len(SHARDS) + 1
WAIT = 300  # seconds for all the runs on a busy 2-core machine


def documented_instance() -> dict:
    """The dagster.yaml of docs/deployment.md, as its section "dagster.yaml" shows it."""
    section = (REPO / "docs" / "deployment.md").read_text().split("\n## dagster.yaml\n", 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Postgres, the document's instance on it, redis-server, a Celery worker and the daemon; yields
    (instance, settings, {name: (process, log)}, the id of the one run that did not go through the queue)."""
    root = tmp_path_factory.mktemp("deployment")
    (root / "shards").mkdir()
    for name in SHARDS:
        relaion_shard(root / "shards", name, ROWS)
    (root / "lists" / "iwf").mkdir(parents=True)
    entry = hashlib.sha256(BLOCKED_URL.removeprefix("http://").encode()).hexdigest()
    (root / "lists" / "iwf" / "url_sha256.txt").write_text(entry + "\n")
    broker = f"redis://127.0.0.1:{free_port()}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAION_", "DAGSTER_"))} | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(root / "dagster"),
        "RELAION_SHARDS": str(root / "shards"),
        "RELAION_BLOCKLISTS": str(root / "lists"),
        "RELAION_SIDECARS": str(root / "sidecars"),
        "RELAION_WORK": str(root / "work"),
        "RELAION_RELEASE": str(root / "releases"),
        "RELAION_CELERY_BROKER": broker,
    }
    config = documented_instance()
    assert config.pop("run_launcher")["class"] == "K8sRunLauncher"
    config["run_coordinator"]["config"]["max_concurrent_runs"] = LIMIT
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text(yaml.safe_dump(config))
    (root / "worker.yaml").write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")
    processes = {}
    with postgres() as pg, pytest.MonkeyPatch.context() as monkeypatch:
        env |= pg
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        redis = start(
            [REDIS, "--port", broker.split(":")[2].split("/")[0], "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no"],
            root / "redis.log",
        )
        worker = start(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
            + ["-y", str(root / "worker.yaml"), "-n", "w1@relaion-test"],
            root / "worker.log",
            env=env,
            cwd=REPO,
        )
        processes |= {"redis-server": (redis, root / "redis.log"), "celery worker": (worker, root / "worker.log")}
        try:
            instance = dg.DagsterInstance.get()  # creates the schema in Postgres before the daemon and worker use it
            settings = Settings.from_env()
            # the first list version, as `relaion run` or partner_list_sensor builds it, so that the shards' runs
            # that the sensor is about to start have a blocklist to match against
            blocklist = (
                build_definitions(settings).resolve_job_def("blocklist_job").execute_in_process(instance=instance)
            )
            assert blocklist.success
            wait_for(lambda: "ready." in (root / "worker.log").read_text(), "the Celery worker", 120, processes)
            with daemon(env, workspace(root, "deployment"), root / "daemon.log") as process:
                processes["dagster-daemon"] = (process, root / "daemon.log")
                yield instance, settings, processes, blocklist.run_id
        finally:
            for process in (worker, redis):  # nothing of theirs is read after the tests: no warm shutdown
                stop(process, first=signal.SIGKILL)


def test_the_instance_keeps_runs_and_events_in_postgres(deployment):
    instance, *_ = deployment
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_the_shard_sensor_adds_every_shard_as_a_partition_and_runs_it(deployment):
    instance, _, processes, _ = deployment
    wait_for(
        lambda: sorted(instance.get_dynamic_partitions("shards")) == SHARDS, "the shards' partitions", 120, processes
    )
    by_sensor = dg.RunsFilter(tags={"dagster/sensor_name": "shard_sensor"})
    wait_for(lambda: len(instance.get_run_records(by_sensor)) == len(SHARDS), "shard_sensor's runs", 60, processes)
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in instance.get_run_records(by_sensor)) == SHARDS


def test_a_backfill_of_every_shard_goes_through_the_queue_and_runs_on_celery(deployment):
    instance, settings, processes, in_process = deployment
    env = dict(os.environ)
    launched = subprocess.run(  # docs/deployment.md's command, on the daemon's workspace
        [str(BIN / "dagster"), "job", "backfill", "-w", str(processes["dagster-daemon"][1].parent / "workspace.yaml")]
        + ["-j", "shard_job", "--all", "true", "--noprompt"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    backfill = dg.RunsFilter(tags={"dagster/backfill": instance.get_backfills()[0].backfill_id})
    assert len(instance.get_run_records(backfill)) == len(SHARDS)
    shard_runs = dg.RunsFilter(job_name="shard_job")
    # every run of shard_job: the shard sensor's, blocklist_version_sensor's for the first list version, the backfill's
    records = wait_for(
        lambda: finished(instance, backfill, len(SHARDS)) and finished(instance, shard_runs, 1),
        "every run of shard_job to finish",
        WAIT,
        processes,
    )
    assert why_failed(instance, records) == {}
    queued = [r for r in instance.get_run_records() if r.dagster_run.run_id != in_process]  # schedule's runs too
    most, same_shard = runs_overlapping(queued)
    assert most <= LIMIT, f"{most} runs at once, more than max_concurrent_runs {LIMIT}"
    assert same_shard == [], "two runs of one shard at once"
    waited = [  # the backfill's runs created while the sensor's run of their shard was still going
        r.dagster_run.run_id
        for r in instance.get_run_records(backfill)
        for other in records
        if other.dagster_run.tags["dagster/partition"] == r.dagster_run.tags["dagster/partition"]
        and other.dagster_run.run_id != r.dagster_run.run_id
        and other.create_timestamp.timestamp() < r.create_timestamp.timestamp() < (other.end_time or float("inf"))
    ]
    assert waited, "no backfill run had to wait for its shard: the limit went untested"
    worker_log = processes["celery worker"][1].read_text()
    received = set(re.findall(r"Task execute_plan\[([0-9a-f-]+)\] received", worker_log))
    succeeded = set(re.findall(r"Task execute_plan\[([0-9a-f-]+)\] succeeded", worker_log))
    assert len(received) == 3 * len(records) and succeeded == received, "each step ran as a Celery task"
    for name in SHARDS:
        assert pipeline.read_stats(settings, "removals", name).rows_removed == 1
        assert pipeline.read_stats(settings, pipeline.RESEARCH_SAFE, name).rows_out == 1


def test_a_running_schedule_ticks_and_its_run_succeeds(deployment):
    instance, _, processes, _ = deployment
    by_schedule = dg.RunsFilter(tags={"dagster/schedule_name": "refresh_every_minute"})
    first = wait_for(
        lambda: [r for r in instance.get_run_records(by_schedule, ascending=True)[:1] if r.dagster_run.is_finished],
        "refresh_every_minute's first run to finish",
        180,
        processes,
    )
    assert why_failed(instance, first) == {}
