"""The Dagster instance of the embedded default store, under `<work>/dagster` (`dagster_home`): its `dagster.yaml`,
written on first use and brought up to date while it still holds a default this module wrote.

`relaion run` executes in its own process and ignores the run queue; everything else (the UI's launches and
backfills, the sensors, the schedules, `dagster job backfill`) queues its runs, and the daemon that `dagster dev`
starts takes them from the queue: at most `max_concurrent_runs()` at once, and never two runs of one shard.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import dagster as dg
import yaml

from relaion_pipeline.core import storage
from relaion_pipeline.core.settings import Settings, available_cpus

PARTITION_TAG = "dagster/partition"  # the tag Dagster puts on every run of a partition (here, a shard)

OLD_DEFAULTS = (  # what earlier versions wrote: replaced by the current default, since nobody edited them
    """\
# Dagster instance of the embedded default store (SQLite storage under this folder).
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
""",
)

TEMPLATE = """\
# Dagster instance of the embedded default store (SQLite storage under this folder), written by relaion
# (assets/instance.py) and rewritten when a new version changes it. Once you edit it, relaion leaves it alone.
telemetry:
  enabled: false
run_coordinator:  # runs wait in a queue that the daemon (started by `dagster dev`) works through
  module: dagster
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {runs}  # a run per two of this machine's {cpus} CPUs, at least one
    tag_concurrency_limits:
      - key: {tag}  # never two runs of one shard at once
        limit: 1
        value: {{applyLimitPerUniqueValue: true}}
"""


class InstanceConfigWarning(UserWarning):
    """An operator's own dagster.yaml that lacks what the default guarantees."""


def max_concurrent_runs(cpus: int | None = None) -> int:
    """Runs at once on a machine with `cpus` CPUs (default: those this process may use, `available_cpus`): one
    per two CPUs, at least one. A shard's stages keep about two CPUs busy (DuckDB's threads, research's two
    encoders), and each run holds DuckDB's memory limit plus ~0.7 GiB (docs/deployment.md)."""
    return max(1, (cpus or available_cpus()) // 2)


def dagster_yaml(cpus: int | None = None) -> str:
    """The default dagster.yaml for a machine with `cpus` CPUs."""
    cpus = cpus or available_cpus()
    return TEMPLATE.format(runs=max_concurrent_runs(cpus), cpus=cpus, tag=PARTITION_TAG)


def _written_by_us(text: str) -> bool:
    """True for the default of this or an earlier version, for any machine: exactly what it wrote for the CPUs its
    comment names (a limit changed by hand is the operator's)."""
    cpus = re.search(r"this machine's (\d+) CPUs", text)
    return text in OLD_DEFAULTS or (cpus is not None and text == dagster_yaml(int(cpus.group(1))))


def one_run_per_partition(config: dict) -> bool:
    """True when an instance's config queues runs with at most one run per partition at a time."""
    coordinator = config.get("run_coordinator")
    if coordinator:
        if coordinator.get("class") != "QueuedRunCoordinator":
            return False
        queue = coordinator.get("config") or {}
    else:  # Dagster's default coordinator queues; its limits may sit under run_queue or concurrency.runs
        queue = config.get("run_queue") or (config.get("concurrency") or {}).get("runs") or {}
    return any(
        limit.get("key") == PARTITION_TAG
        and limit.get("limit") == 1
        and (limit.get("value") or {}).get("applyLimitPerUniqueValue") is True
        for limit in queue.get("tag_concurrency_limits") or []
    )


def ensure_config(home: str | Path) -> Path:
    """Write `<home>/dagster.yaml` if it is missing or still holds a default this module wrote that differs from
    today's; leave one the operator edited as it is, with an `InstanceConfigWarning` when it lacks the queue's
    one-run-per-shard limit."""
    config = Path(home) / "dagster.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = config.read_text() if config.exists() else None
    if text is None or (_written_by_us(text) and text != dagster_yaml()):
        temporary = config.with_name(f".dagster.yaml.{os.getpid()}")
        temporary.write_text(dagster_yaml())
        temporary.replace(config)
    elif not _written_by_us(text):
        try:
            ok = one_run_per_partition(yaml.safe_load(text) or {})
        except yaml.YAMLError as error:
            raise ValueError(f"{config}: not valid YAML ({error})") from error
        if not ok:
            warnings.warn(
                f"{config} is not a default relaion wrote (edited?), so it is left as it is; it does not queue runs with at most one run"
                f" per shard (a QueuedRunCoordinator with tag_concurrency_limits: [{{key: {PARTITION_TAG}, limit: 1,"
                " value: {applyLimitPerUniqueValue: true}}]), so a backfill may start every shard at once."
                f" Delete it to get the default (queued runs, {max_concurrent_runs()} at a time at most, one per shard),"
                " or add the limits yourself (docs/deployment.md)",
                InstanceConfigWarning,
                stacklevel=2,
            )
    return config


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The Dagster instance kept under `<work>/dagster` (its dagster.yaml made or brought up to date first)."""
    home = settings.dagster_home
    if not storage.is_local(home):
        raise ValueError(f"{home}: the Dagster instance must live on a local path (setting dagster_home)")
    ensure_config(home)
    os.environ["DAGSTER_HOME"] = str(Path(home).resolve())
    return dg.DagsterInstance.get()


if __name__ == "__main__":  # `make ui`: python -m assets.instance <dagster_home>, before `dagster dev`
    ensure_config(sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().dagster_home)
