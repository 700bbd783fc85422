"""A backfill of every shard on the embedded default instance (issue 21): the runs wait in the queue and the
real `dagster-daemon` starts them, never more at once than the instance's limit and never two of one shard, and
every one succeeds. `relaion run` (execute_in_process) ignores the queue and works as before."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tomllib
import warnings

import dagster as dg
import pytest
import yaml
from conftest import BLOCKED_URL, relaion_shard
from services import BIN, REPO, daemon, finished, runs_overlapping, wait_for, why_failed, workspace

from assets import instance as embedded
from assets.definitions import build_definitions
from assets.partitions import shard_partitions
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import pipeline

SHARDS = [f"part-{i}" for i in range(embedded.max_concurrent_runs() + 1)]  # one more than may run at once
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
        assert pipeline.read_stats(settings, "removals", name).rows_removed == 1
        assert pipeline.read_stats(settings, pipeline.RESEARCH_SAFE, name).rows_out == 1


def test_the_default_instance_config_is_written_and_an_older_default_brought_up_to_date(tmp_path):
    config = embedded.ensure_config(tmp_path / "fresh")
    assert config.read_text() == embedded.dagster_yaml()
    assert embedded.one_run_per_partition(yaml.safe_load(config.read_text()))

    old = tmp_path / "old" / "dagster.yaml"
    old.parent.mkdir()
    old.write_text(embedded.OLD_DEFAULTS[0])  # what `relaion run` wrote before runs were queued
    embedded.ensure_config(old.parent)
    assert old.read_text() == embedded.dagster_yaml()

    moved = tmp_path / "moved" / "dagster.yaml"  # written on a machine with 16 CPUs, then copied here
    moved.parent.mkdir()
    moved.write_text(embedded.dagster_yaml(cpus=16))
    assert "max_concurrent_runs: 8 " in moved.read_text()
    embedded.ensure_config(moved.parent)
    assert moved.read_text() == embedded.dagster_yaml()


def test_an_edited_instance_config_is_left_alone_with_a_warning_when_it_lacks_the_limits(tmp_path):
    edited = tmp_path / "edited" / "dagster.yaml"
    edited.parent.mkdir()
    edited.write_text(embedded.OLD_DEFAULTS[0] + "# my own\n")
    with pytest.warns(
        embedded.InstanceConfigWarning, match="not a default relaion wrote .edited.., so it is left as it is"
    ):
        embedded.ensure_config(edited.parent)
    assert edited.read_text() == embedded.OLD_DEFAULTS[0] + "# my own\n"

    own_limit = tmp_path / "own-limit" / "dagster.yaml"  # the default with a limit of the operator's choosing
    own_limit.parent.mkdir()
    text = embedded.dagster_yaml(cpus=16).replace("max_concurrent_runs: 8 ", "max_concurrent_runs: 3 ")
    own_limit.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedded.ensure_config(own_limit.parent)
    assert own_limit.read_text() == text

    production = tmp_path / "production" / "dagster.yaml"  # docs/deployment.md's: queued, one run per shard
    production.parent.mkdir()
    section = (REPO / "docs" / "deployment.md").read_text().split("\n## dagster.yaml\n", 1)[1]
    production.write_text(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedded.ensure_config(production.parent)
    assert embedded.one_run_per_partition(yaml.safe_load(production.read_text()))


def test_the_cli_and_the_daemon_name_the_code_location_alike():
    """`dagster dev` and `dagster-daemon run` (no -w) name the location after pyproject.toml's module; `dagster job
    backfill -w workspace.yaml` after workspace.yaml. A run created under another name than the daemon's fails at
    launch ("Location assets.definitions:defs does not exist in workspace")."""
    (location,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    module = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert location["python_module"]["location_name"] == module == location["python_module"]["module_name"]
