"""Running again: `relaion run` redoes only the shards whose inputs, lists or settings changed, and a replaced
shard file or image-hash sidecar is noticed (held back from the release, re-run by a sensor)."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import sensor_requests

from assets.definitions import build_definitions
from assets.runner import instance_for, run_all
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing.release import plan
from relaion_pipeline.stages import pipeline


def _outputs(settings: Settings) -> dict[str, tuple[bytes, int]]:
    work = Path(settings.work)
    return {
        str(p.relative_to(work)): (p.read_bytes(), p.stat().st_mtime_ns)
        for folder in ("removals", "research", "research-safe", "stats")
        for p in sorted((work / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def processed(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    planted = demo.generate(tmp_path / "in", shards=3, rows=500, seed=11)
    names = sorted(k for k in planted if not k.startswith("_"))
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    lines: list[str] = []
    assert run_all(settings, progress=lines.append).ok
    assert not any("skipped" in line for line in lines)
    return settings, names


def test_a_second_run_skips_every_up_to_date_shard_and_changes_nothing(processed):
    settings, names = processed
    before = _outputs(settings)
    latest = (Path(settings.release) / "latest").read_text()

    lines: list[str] = []
    summary = run_all(settings, progress=lines.append)

    assert summary.ok
    assert sum("up to date" in line and "skipped" in line for line in lines) == len(names)
    assert _outputs(settings) == before, "not a byte nor a modification time changed"
    assert (Path(settings.release) / "latest").read_text() == latest
    assert [s.rows_in for s in summary.shards] == [pipeline.read_stats(settings, "removals", n).rows_in for n in names]


def test_force_and_changed_settings_run_the_shards_again(processed):
    settings, names = processed

    lines: list[str] = []
    assert run_all(settings, progress=lines.append, force=True).ok
    assert not any("skipped" in line for line in lines)

    stricter = settings.with_(safe_threshold=0.3)
    lines = []
    assert run_all(stricter, progress=lines.append).ok
    assert not any("skipped" in line for line in lines)
    assert all(pipeline.read_stats(stricter, pipeline.RESEARCH_SAFE, n).safe_threshold == 0.3 for n in names)


def test_a_replaced_sidecar_holds_the_shard_back_and_the_sensor_reruns_only_it(processed):
    settings, names = processed
    changed = names[0]
    sidecar = Path(settings.sidecars) / f"{changed}.parquet"
    table = pq.read_table(sidecar)
    pq.write_table(table.slice(0, table.num_rows - 1), sidecar)  # a new download lost one image
    os.utime(sidecar, ns=(1, 1))

    ready, held_back = plan(settings, names)
    assert sorted(ready) == names[1:]
    assert held_back == {changed: "image-hash sidecar added, changed or removed since the shard was matched"}

    defs = build_definitions(settings)
    instance = instance_for(settings)
    requests = sensor_requests(defs, instance, "changed_shard_sensor")
    assert [r.partition_key for r in requests] == [changed]

    lines: list[str] = []
    assert run_all(settings, progress=lines.append).ok
    assert [line.split(":")[0] for line in lines if "skipped" in line] == [
        f"[{i}/{len(names)}] {n}" for i, n in enumerate(names, start=1) if n != changed
    ]
    assert pipeline.read_stats(settings, "removals", changed).sidecar_rows == table.num_rows - 1
