"""A backfill of every shard on the embedded default instance (issue 21): the runs wait in the queue and the
real `dagster-daemon` starts them, never more at once than the instance's limit and never two of one shard, and
every one succeeds. `relaion run` (execute_in_process) ignores the queue and works as before."""

from __future__ import annotations

import hashlib
import os
import subprocess

import dagster as dg
import yaml
from conftest import BLOCKED_URL, relaion_shard
from services import BIN, REPO, daemon, finished, runs_overlapping, wait_for, why_failed, workspace

from assets import instance as embedded
from assets.definitions import build_definitions
from assets.partitions import shard_partitions
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import pipeline

SHARDS = [f"part-{i}" for i in range(3)]
ROWS = [(BLOCKED_URL, "blocked", 0.1), ("http://ok.example/a.jpg", "a cat", 0.2), ("http://ok.example/b", "b", 0.9)]


def test_a_backfill_of_every_shard_runs_through_the_queue_within_its_limits(tmp_path, monkeypatch):
    (tmp_path / "shards").mkdir()
    for name in SHARDS:
        relaion_shard(tmp_path / "shards", name, ROWS)
    (tmp_path / "lists" / "iwf").mkdir(parents=True)
    entry = hashlib.sha256(BLOCKED_URL.removeprefix("http://").encode()).hexdigest()
    (tmp_path / "lists" / "iwf" / "url_sha256.txt").write_text(entry + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAION_", "DAGSTER_"))} | {
        "RELAION_SHARDS": str(tmp_path / "shards"),
        "RELAION_BLOCKLISTS": str(tmp_path / "lists"),
        "RELAION_SIDECARS": str(tmp_path / "sidecars"),
        "RELAION_WORK": str(tmp_path / "work"),
        "RELAION_RELEASE": str(tmp_path / "releases"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    for key in ("RELAION_SHARDS", "RELAION_BLOCKLISTS", "RELAION_SIDECARS", "RELAION_WORK", "RELAION_RELEASE"):
        monkeypatch.setenv(key, env[key])
    settings = Settings.from_env()
    instance = embedded.instance_for(settings)  # writes the default dagster.yaml, as `relaion run` does
    env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
    config = yaml.safe_load((tmp_path / "work" / "dagster" / "dagster.yaml").read_text())["run_coordinator"]
    limit = config["config"]["max_concurrent_runs"]
    assert config["class"] == "QueuedRunCoordinator" and limit == embedded.max_concurrent_runs()
    instance.add_dynamic_partitions(shard_partitions.name, SHARDS)  # as shard_sensor or `relaion run` would
    blocklist = build_definitions(settings).resolve_job_def("blocklist_job")
    assert blocklist.execute_in_process(instance=instance).success

    location = workspace(tmp_path, "queue_only")
    with daemon(env, location, tmp_path / "daemon.log") as process:
        launched = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-w", str(location), "-j", "shard_job", "--all", "true"]
            + ["--noprompt"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert launched.returncode == 0, launched.stdout + launched.stderr
        backfill = dg.RunsFilter(tags={"dagster/backfill": instance.get_backfills()[0].backfill_id})
        queued = instance.get_run_records(backfill)
        assert len(queued) == len(SHARDS)
        records = wait_for(
            lambda: finished(instance, backfill, len(SHARDS)),
            "the backfill's runs to finish",
            240,
            {"dagster-daemon": (process, tmp_path / "daemon.log")},
        )

    assert why_failed(instance, records) == {}
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == SHARDS
    most, same_shard = runs_overlapping(records)
    assert most <= limit, f"{most} runs at once, more than the limit of {limit}"
    assert same_shard == []
    for name in SHARDS:
        assert pipeline.read_stats(settings, "removals", name)["rows_removed"] == 1
        assert pipeline.read_stats(settings, pipeline.RESEARCH_SAFE, name)["rows_out"] == 1
