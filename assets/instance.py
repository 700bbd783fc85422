"""The Dagster instance of the embedded default store, under `<work>/dagster` (`dagster_home`): its
`dagster.yaml`, written on first use."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from relaion_pipeline.core import storage
from relaion_pipeline.core.settings import Settings

DAGSTER_YAML = """\
# Dagster instance of the embedded default store (SQLite storage under this folder).
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The Dagster instance kept under `<work>/dagster` (created on first use)."""
    home = settings.dagster_home
    if not storage.is_local(home):
        raise ValueError(f"{home}: the Dagster instance must live on a local path (setting dagster_home)")
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(Path(home).resolve())
    return dg.DagsterInstance.get()
