"""A new list version re-matches only the shards its added or removed entries touch; the others are recorded
as verified against it without a byte of their outputs changing, and the blocklist_version_sensor asks for
runs of the touched shards alone."""

import hashlib
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sensor_requests

from assets.definitions import build_definitions
from assets.partitions import shard_partitions
from assets.runner import instance_for
from relaion_pipeline import incremental, status
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks

SHARED = "http://shared.example.com/common/a.jpg"
ONLY_IN = {"one": "http://only-one.example.org/pics/x.jpg", "two": "http://only-two.example.org/y.png"}


@pytest.fixture
def settings(tmp_path):
    for name, own in ONLY_IN.items():
        urls = [SHARED, own, *(f"http://{name}.example.net/{i}.jpg" for i in range(3))]
        table = pa.table(
            {
                "url": urls,
                "caption": [f"caption {i}" for i in range(len(urls))],
                "key": [f"{name}-{i}" for i in range(len(urls))],
                "punsafe": pa.array([0.1] * len(urls), pa.float32()),
            }
        )
        (tmp_path / "shards").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "shards" / f"{name}.parquet")
    _write_list(tmp_path, "base", ["shared.example.com/common/a.jpg"])
    return Settings.layout(tmp_path, tmp_path)


def _write_list(root: Path, source: str, expressions: list[str], kind: str = "url_sha256") -> None:
    folder = root / "blocklists" / source
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256 if kind == "url_sha256" else hashlib.md5
    (folder / f"{kind}.txt").write_text("".join(digest(e.encode()).hexdigest() + "\n" for e in expressions))


def _process(settings: Settings, name: str) -> None:
    pipeline.compute_removals(settings, name)
    pipeline.write_research(settings, name)
    checks.check_research(settings, name)
    pipeline.write_research_safe(settings, name)
    checks.check_research_safe(settings, name)
    checks.check_input(settings, name)


def _output_bytes(settings: Settings, name: str) -> dict[str, bytes]:
    work = pipeline.Work(settings.work)
    files = [work.removals(name), work.variant("research", name), work.variant("research-safe", name)]
    return {path: Path(path).read_bytes() for path in files}


def test_only_touched_shards_are_rematched(settings):
    pipeline.build_blocklist(settings)
    for name in ONLY_IN:
        _process(settings, name)
    before = {name: _output_bytes(settings, name) for name in ONLY_IN}
    old_version = pipeline.read_stats(settings, "removals", "two").blocklist_version

    _write_list(Path(settings.blocklists).parent, "new-partner", ["only-one.example.org/pics/"])
    version = pipeline.build_blocklist(settings).version
    update = incremental.verify_untouched(settings, list(ONLY_IN))

    assert list(update["touched"]) == ["one"]
    assert "1 rows may match a changed URL or domain entry" in update["touched"]["one"]
    assert update["verified"] == ["two"]
    assert _output_bytes(settings, "two") == before["two"], "an untouched shard's outputs do not change"
    for stage in ("removals", "research", "research-safe"):
        stats = pipeline.read_stats(settings, stage, "two")
        assert stats.blocklist_version == version and stats.verified_from == old_version
    assert status.needs_matching(settings, list(ONLY_IN)) == ["one"]
    ready, held_back = release.plan(settings, list(ONLY_IN))
    assert list(ready) == ["two"] and "matched against blocklist" in held_back["one"]

    _process(settings, "one")
    ready, held_back = release.plan(settings, list(ONLY_IN))
    assert sorted(ready) == ["one", "two"] and held_back == {}
    assert pipeline.read_stats(settings, "removals", "one").rows_removed == 2


def test_removing_an_entry_touches_the_shards_it_matched(settings):
    pipeline.build_blocklist(settings)
    for name in ONLY_IN:
        _process(settings, name)
    _write_list(Path(settings.blocklists).parent, "base", ["only-two.example.org/"])  # shared URL unblocked

    pipeline.build_blocklist(settings)
    update = incremental.verify_untouched(settings, list(ONLY_IN))

    assert sorted(update["touched"]) == ["one", "two"], "both shards held the URL that is no longer listed"
    assert update["verified"] == []


def test_a_changed_input_or_a_missing_index_is_always_rematched(settings):
    pipeline.build_blocklist(settings)
    for name in ONLY_IN:
        _process(settings, name)
    Path(pipeline.Work(settings.work).root, "index", "two.parquet").unlink()
    _write_list(Path(settings.blocklists).parent, "other-partner", ["nowhere.example/"])

    pipeline.build_blocklist(settings)
    update = incremental.verify_untouched(settings, list(ONLY_IN))

    assert update["verified"] == ["one"]
    assert update["touched"] == {"two": "its input changed or has no current lookup-hash index"}


def test_a_first_url_md5_list_rematches_shards_indexed_without_md5(settings):
    pipeline.build_blocklist(settings)
    for name in ONLY_IN:
        _process(settings, name)
    _write_list(Path(settings.blocklists).parent, "md5-partner", ["nowhere.example/"], kind="url_md5")

    pipeline.build_blocklist(settings)
    update = incremental.verify_untouched(settings, list(ONLY_IN))

    assert update["verified"] == []
    assert sorted(update["touched"]) == ["one", "two"]


def test_blocklist_asset_records_verified_shards_and_the_sensor_runs_only_touched_ones(settings):
    instance = instance_for(settings)
    instance.add_dynamic_partitions(shard_partitions.name, list(ONLY_IN))
    defs = build_definitions(settings)
    assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success
    for name in ONLY_IN:
        assert defs.resolve_job_def("shard_job").execute_in_process(partition_key=name, instance=instance).success
    two_research = Path(pipeline.Work(settings.work).variant("research", "two")).read_bytes()

    _write_list(Path(settings.blocklists).parent, "new-partner", ["only-one.example.org/pics/x.jpg"])
    result = defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance)

    metadata = result.asset_materializations_for_node("blocklist")[-1].metadata
    assert metadata["shards_verified_unchanged"].value == 1
    assert metadata["shards_to_rematch"].value == 1
    requests = sensor_requests(defs, instance, "blocklist_version_sensor")
    assert [r.partition_key for r in requests] == ["one"]
    assert Path(pipeline.Work(settings.work).variant("research", "two")).read_bytes() == two_research


def test_the_nightly_refresh_rebuilds_the_blocklist(settings):
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def("refresh_schedule")
    with dg.build_schedule_context(instance=instance_for(settings)) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert schedule.job_name == "blocklist_job" and len(requests) == 1
    assert defs.resolve_job_def(schedule.job_name).execute_in_process(instance=instance_for(settings)).success
    assert status.needs_matching(settings, list(ONLY_IN)) == list(ONLY_IN), "nothing processed yet"


def test_a_shard_with_a_run_still_to_start_is_not_asked_to_run_again(settings):
    """A new shard's run (the shard sensor's) waits in the queue when the first list version is built: the
    blocklist_version_sensor leaves it to that run, which matches it against this version, and asks for the
    others; the changed-shard sensor leaves a replaced shard with a run still to start alone too."""
    instance = instance_for(settings)
    instance.add_dynamic_partitions(shard_partitions.name, list(ONLY_IN))
    defs = build_definitions(settings)
    shard_job = defs.resolve_job_def("shard_job")
    queued = instance.create_run_for_job(
        shard_job, status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/partition": "one"}
    )  # created, not started: as a run waits for its launch or a free slot of the queue
    assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success

    requests = sensor_requests(defs, instance, "blocklist_version_sensor")
    assert [r.partition_key for r in requests] == ["two"]
    instance.report_run_canceled(queued)  # gone: the shard is asked for again
    requests = sensor_requests(defs, instance, "blocklist_version_sensor")
    assert sorted(r.partition_key for r in requests) == ["one", "two"]

    for name in ONLY_IN:
        _process(settings, name)
        shard = Path(settings.shards) / f"{name}.parquet"
        pq.write_table(pq.read_table(shard), shard.with_suffix(".new"), row_group_size=2)
        shard.with_suffix(".new").replace(shard)  # replaced by an upload of other bytes
    assert sorted(status.inputs_replaced(settings, list(ONLY_IN))) == ["one", "two"]
    instance.create_run_for_job(shard_job, status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/partition": "one"})
    requests = sensor_requests(defs, instance, "changed_shard_sensor")
    assert [r.partition_key for r in requests] == ["two"]
