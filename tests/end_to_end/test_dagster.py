"""The Dagster layer: definitions load with the whole lineage, sensors discover shards and list changes."""

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.definitions import build_definitions, defs
from assets.partitions import shard_partitions
from assets.resources import RelaionSettings
from relaion_pipeline.core.settings import Settings


def test_definitions_validate_and_show_the_whole_graph():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    deps = {
        key.to_user_string(): sorted(k.to_user_string() for k in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert deps == {
        "blocklist": [],
        "removals": ["blocklist"],
        "research": ["removals"],
        "research_safe": ["research"],
        "release": ["research_safe"],
    }
    for name in ("removals", "research", "research_safe"):
        assert graph.get(dg.AssetKey(name)).partitions_def == shard_partitions
    checks = {spec.name: spec.blocking for asset in defs.assets for spec in asset.check_specs}
    assert checks == {
        "blocklist_well_formed": True,
        "input_shard_well_formed": True,
        "release_matches_its_files": False,
        "research_has_no_blocklist_match": True,
        "research_rows_add_up": True,
        "research_safe_below_threshold": True,
        "research_safe_rows_add_up": True,
    }


def _settings(tmp_path):
    return Settings(
        shards=str(tmp_path / "shards"),
        blocklists=str(tmp_path / "lists"),
        sidecars=str(tmp_path / "sidecars"),
        work=str(tmp_path / "work"),
        release=str(tmp_path / "releases"),
    )


def _shard(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"URL": ["http://a.example/x"], "TEXT": ["t"]}), path)


def test_shard_sensor_adds_a_partition_and_a_run_for_each_new_shard(tmp_path):
    settings = _settings(tmp_path)
    _shard(tmp_path / "shards" / "part-0.parquet")
    _shard(tmp_path / "shards" / "en" / "part 1.parquet")
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("shard_sensor")
    resources = {"relaion": RelaionSettings.from_settings(settings)}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["en/part 1", "part-0"]]
        assert sorted(r.partition_key for r in result.run_requests) == ["en/part 1", "part-0"]

        instance.add_dynamic_partitions(shard_partitions.name, ["en/part 1", "part-0"])
        _shard(tmp_path / "shards" / "part-2.parquet")
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["part-2"]


def test_partner_list_sensor_fires_once_per_change(tmp_path):
    settings = _settings(tmp_path)
    (tmp_path / "lists" / "src").mkdir(parents=True)
    (tmp_path / "lists" / "src" / "domain.txt").write_text("a.example\n")
    sensor = build_definitions(settings).resolve_sensor_def("partner_list_sensor")
    resources = {"relaion": RelaionSettings.from_settings(settings)}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            first = sensor(context)
            assert isinstance(first, dg.RunRequest)
            assert isinstance(sensor(context), dg.SkipReason)
            (tmp_path / "lists" / "src" / "domain.txt").write_text("a.example\nb.example\n")
            assert isinstance(sensor(context), dg.RunRequest)


def test_lists_already_built_do_not_trigger_a_rebuild_but_a_change_does(tmp_path):
    from relaion_pipeline.stages import pipeline

    settings = _settings(tmp_path)
    (tmp_path / "lists" / "src").mkdir(parents=True)
    (tmp_path / "lists" / "src" / "domain.txt").write_text("a.example\n")
    pipeline.build_blocklist(settings)  # as `relaion run` did before the UI started
    sensor = build_definitions(settings).resolve_sensor_def("partner_list_sensor")
    resources = {"relaion": RelaionSettings.from_settings(settings)}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            assert isinstance(sensor(context), dg.SkipReason)
            (tmp_path / "lists" / "src" / "domain.txt").write_text("b.example\n")
            assert isinstance(sensor(context), dg.RunRequest)


def test_only_shards_matched_against_another_version_are_stale(tmp_path):
    from relaion_pipeline import status
    from relaion_pipeline.stages import pipeline

    settings = _settings(tmp_path)
    for name in ("a", "b"):
        _shard(tmp_path / "shards" / f"{name}.parquet")
    (tmp_path / "lists" / "src").mkdir(parents=True)
    (tmp_path / "lists" / "src" / "domain.txt").write_text("a.example\n")
    pipeline.build_blocklist(settings)
    assert status.needs_matching(settings, ["a", "b"]) == ["a", "b"]
    pipeline.compute_removals(settings, "a")
    assert status.needs_matching(settings, ["a", "b"]) == ["b"]
    (tmp_path / "lists" / "src" / "domain.txt").write_text("c.example\n")
    pipeline.build_blocklist(settings)
    assert status.needs_matching(settings, ["a", "b"]) == ["a", "b"]


def test_the_ui_shows_what_each_sensor_and_schedule_does_and_their_defaults_are_deliberate():
    """Every sensor and schedule carries its description; sensors run by default (new shards, list changes,
    alerts), the nightly schedules start stopped (README says so)."""
    sensors = {s.name: s for s in defs.sensors}
    assert len(sensors) == 7
    for name, sensor in sensors.items():
        assert sensor.description and len(sensor.description) > 30, name
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, name
    for schedule in defs.schedules:
        assert schedule.description and "Stopped until you start it" in schedule.description
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_runs_started_by_relaion_run_carry_a_tag(two_shards):
    from assets.runner import TAGS, instance_for, run_all

    settings = two_shards([("http://a.example/x.jpg", "a caption", 0.1)])
    assert run_all(settings, progress=lambda line: None).ok
    runs = instance_for(settings).get_runs()
    assert len(runs) == 4 and all(run.tags.get("relaion/started_by") == "relaion run" for run in runs)
    assert TAGS == {"relaion/started_by": "relaion run"}
