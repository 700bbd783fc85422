"""When a shard cannot be read or a blocking check fails, that shard alone is held back and the run says so."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BLOCKED_URL, written

from assets.runner import run_all
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline, variants

BAD_URL = BLOCKED_URL


@pytest.fixture
def settings(two_shards):
    return two_shards(
        [
            ("http://fine.example/a.jpg", "a bicycle", 0.1),
            (BAD_URL, "secret caption", 0.2),
            ("http://fine.example/b.jpg", "a lighthouse", 0.3),
        ]
    )


def test_unreadable_shard_fails_alone_and_is_held_back(settings, tmp_path):
    good = (tmp_path / "shards" / "good-1.parquet").read_bytes()
    (tmp_path / "shards" / "broken.parquet").write_bytes(good[: len(good) // 2])
    lines = []

    summary = run_all(settings, progress=lines.append)

    assert not summary.ok
    by_name = {s.name: s for s in summary.shards}
    assert by_name["good-1"].ok and by_name["good-2"].ok
    assert not by_name["broken"].ok
    assert "broken.parquet: not a readable parquet file" in by_name["broken"].error
    manifest, problems = release.verify(settings.release)
    assert problems == []
    assert sorted(manifest["shards"]) == ["good-1", "good-2"]
    assert "broken" in manifest["held_back"]
    assert (tmp_path / "shards" / "broken.parquet").read_bytes() == good[: len(good) // 2], "input untouched"


def test_failing_blocking_check_holds_the_shard_back(settings, tmp_path, monkeypatch):
    original = variants.write_research

    def faulty(shard_path, removed, destination, safe=None):  # a filter bug: keeps every row of good-2
        if "good-2" in shard_path:
            removed = np.array([], dtype=np.int64)
        return original(shard_path, removed, destination, safe)

    monkeypatch.setattr(variants, "write_research", faulty)
    summary = run_all(settings, progress=lambda line: None)

    assert not summary.ok
    by_name = {s.name: s for s in summary.shards}
    assert by_name["good-1"].ok
    assert sorted(by_name["good-2"].failed_checks) == ["research_has_no_blocklist_match", "research_rows_add_up"]
    published = Path(release.resolve(settings.release))
    manifest = json.loads((published / "manifest.json").read_text())
    assert list(manifest["shards"]) == ["good-1"]
    assert manifest["held_back"]["good-2"].startswith("shard 'good-2': no research-safe output yet")
    assert not (published / "research" / "good-2.parquet").exists()
    record = json.loads(
        (tmp_path / "work" / "validation" / "research_has_no_blocklist_match" / "good-2.json").read_text()
    )
    assert record["success"] is False
    failure = record["failures"][0]
    assert failure["observed"] == 2, "found both by re-matching the URL and by its removed row key"
    assert failure["sample_row_keys"] == written(Path(settings.shards) / "good-2.parquet", ["good-2-1"])
    assert BAD_URL not in json.dumps(record) and "secret caption" not in json.dumps(record)


def test_malformed_input_fails_its_check_and_is_held_back(settings, tmp_path):
    pq.write_table(
        pa.table(
            {
                "url": ["http://fine.example/a.jpg", None, "http://fine.example/b.jpg", "http://fine.example/c.jpg"],
                "caption": ["a", "b", "c", "d"],
                "key": ["bad-0", "bad-1", "bad-2", "bad-2"],
                "punsafe": pa.array([0.1, 0.2, 1.7, 0.3], pa.float32()),
            }
        ),
        tmp_path / "shards" / "bad.parquet",
    )
    summary = run_all(settings, progress=lambda line: None)

    by_name = {s.name: s for s in summary.shards}
    assert by_name["bad"].failed_checks == ["input_shard_well_formed"]
    assert by_name["good-1"].ok and by_name["good-2"].ok
    record = json.loads((tmp_path / "work" / "validation" / "input_shard_well_formed" / "bad.json").read_text())
    failed = {f["column"]: (f["observed"], f["sample_row_keys"]) for f in record["failures"]}
    shown = dict(zip(["bad-1", "bad-2"], written(tmp_path / "shards" / "bad.parquet", ["bad-1", "bad-2"]), strict=True))
    assert failed == {
        "url_missing": (1, [shown["bad-1"]]),
        "punsafe_out_of_range": (1, [shown["bad-2"]]),
        "duplicate_row_keys": (1, [shown["bad-2"]]),
    }
    published = Path(release.resolve(settings.release))
    manifest = json.loads((published / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["good-1", "good-2"]
    assert "bad" in manifest["held_back"]
    release_check = json.loads(
        (tmp_path / "work" / "validation" / "release_matches_its_files" / f"{manifest['version']}.json").read_text()
    )
    assert release_check["success"] and release_check["problems"] == []
    index = (tmp_path / "work" / "validation" / "index.html").read_text()
    assert '<td>input_shard_well_formed</td><td>bad</td><td class="FAILED">FAILED</td>' in index
    page = (tmp_path / "work" / "validation" / "input_shard_well_formed" / "bad.html").read_text()
    assert page.count("maximum value must be greater than or equal to") >= 3, "one line per failed expectation"


def test_blocklist_check_revalidates_the_merged_list_independently_of_the_parser(settings, tmp_path):
    from relaion_pipeline.lists import blocklists
    from relaion_pipeline.stages import pipeline
    from relaion_pipeline.validation import checks

    pipeline.build_blocklist(settings)
    assert checks.check_blocklist(settings)[0].success
    _, path = blocklists.read_current(str(tmp_path / "work" / "blocklist"))
    table = pq.read_table(path)
    tampered = pa.table(
        {
            "kind": table.column("kind").to_pylist() + ["url_md5", "domain"],
            "value": table.column("value").to_pylist() + ["abc", "not a host"],
            "source": table.column("source").to_pylist() + ["", "x"],
            "category": table.column("category").to_pylist() + ["csam", "opt-out"],
        }
    )
    pq.write_table(tampered, path)
    outcome = checks.check_blocklist(settings)[0]
    assert not outcome.success
    assert {f.column: f.observed for f in outcome.failures} == {
        "malformed_hashes": 1,
        "malformed_domains": 1,
        "entries_without_source": 1,
    }


def test_research_safe_with_another_schema_than_its_input_is_held_back(settings, tmp_path, monkeypatch):
    original = variants.write_research_safe

    def retyping(shard_path, removed, roles, settings_, destination):  # a bug that widens punsafe
        written = original(shard_path, removed, roles, settings_, destination)
        if "good-1" in destination:
            table = pq.read_table(destination)
            pq.write_table(table.set_column(3, "punsafe", table.column("punsafe").cast(pa.float64())), destination)
        return written

    monkeypatch.setattr(variants, "write_research_safe", retyping)
    monkeypatch.setattr(pipeline, "_take_staged_safe", lambda *args: None)  # written alone, with the bug
    summary = run_all(settings, progress=lambda line: None)

    by_name = {s.name: s for s in summary.shards}
    assert by_name["good-1"].failed_checks == ["research_safe_rows_add_up"]
    assert by_name["good-2"].ok
    record = json.loads((tmp_path / "work" / "validation" / "research_safe_rows_add_up" / "good-1.json").read_text())
    assert [(f["column"], f["observed"]) for f in record["failures"]] == [("schema_differs_from_input", 1)]
    manifest = json.loads((Path(release.resolve(settings.release)) / "manifest.json").read_text())
    assert list(manifest["shards"]) == ["good-2"] and "good-1" in manifest["held_back"]


def test_duckdb_out_of_memory_names_the_stage_the_limit_and_the_settings(tmp_path):
    """A limit too small for the shard stops the stage with what to change, not DuckDB's advice to run SQL."""
    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.demo_data import demo
    from relaion_pipeline.stages import pipeline
    from relaion_pipeline.stages.pipeline import StageError

    demo.generate(tmp_path, shards=1, rows=20_000, seed=0)
    settings = Settings.layout(tmp_path, tmp_path, duckdb_memory_limit="2MB", duckdb_threads=2)
    with pytest.raises(StageError, match=r"^build_blocklist: DuckDB ran out of memory at its limit of 2MB"):
        pipeline.build_blocklist(settings)  # DuckDB sorts the merged lists within the limit too
    assert pipeline.blocklists.read_pointer(pipeline.Work(settings.work).blocklist_dir) is None, "no list half-built"
    pipeline.build_blocklist(Settings.layout(tmp_path, tmp_path))
    name = next((tmp_path / "shards").rglob("*.parquet")).relative_to(tmp_path / "shards").with_suffix("")
    with pytest.raises(StageError) as raised:
        pipeline.compute_removals(settings, name.as_posix())
    message = str(raised.value)
    assert message.startswith(f"compute_removals of shard '{name.as_posix()}': DuckDB ran out of memory")
    assert "limit of 2MB with 2 threads" in message and "RELAION_DUCKDB_MEMORY_LIMIT" in message
    assert "SET memory_limit" not in message
    removals = Path(pipeline.Work(settings.work).removals(name.as_posix()))
    assert not removals.exists(), "no removals table from the failed run"


def test_duckdb_spill_space_running_out_asks_for_space_not_memory(tmp_path):
    """DuckDB raises the same out-of-memory error when it cannot spill; the advice is then about the
    temporary folder."""
    import duckdb

    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.stages import pipeline

    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{tmp_path}'")
    con.execute("SET memory_limit = '20MB'")
    con.execute("SET max_temp_directory_size = '1MB'")
    with pytest.raises(duckdb.OutOfMemoryException) as raised:
        con.execute("SELECT md5(CAST(range AS VARCHAR)) AS h FROM range(3000000) ORDER BY h").fetchall()
    con.close()
    message = str(pipeline.out_of_memory(Settings(duckdb_threads=2), "removals of shard 's'", raised.value))
    assert message.startswith("removals of shard 's': DuckDB could not spill beyond its memory limit of 512MB")
    assert "free space in the temporary folder" in message


def test_a_published_row_that_is_not_in_the_input_fails_the_counts_check(settings):
    """A research or research-safe file that is not its source minus the dropped rows, in order, is looked at
    row by row: a foreign row is counted (a reordered file still holds only input rows)."""
    from relaion_pipeline.stages import pipeline
    from relaion_pipeline.validation import checks

    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    pipeline.write_research(settings, "good-1")
    assert all(o.success for o in checks.check_research(settings, "good-1"))
    pipeline.write_research_safe(settings, "good-1")
    assert all(o.success for o in checks.check_research_safe(settings, "good-1"))
    work = pipeline.Work(settings.work)
    research, safe = Path(work.variant("research", "good-1")), Path(work.variant("research-safe", "good-1"))
    table = pq.read_table(research)
    pq.write_table(table.take([1, 0]), research)  # reordered: still only input rows
    counts = next(o for o in checks.check_research(settings, "good-1") if o.suite == checks.RESEARCH_COUNTS)
    assert counts.success
    foreign = table.set_column(table.schema.get_field_index("key"), "key", pa.array(["stranger", "good-1-0"]))
    pq.write_table(foreign.cast(table.schema), research)
    counts = next(o for o in checks.check_research(settings, "good-1") if o.suite == checks.RESEARCH_COUNTS)
    assert [(f.column, f.observed) for f in counts.failures] == [("rows_not_in_input", 1)]
    pq.write_table(table, research)
    pq.write_table(foreign.cast(table.schema), safe)
    subset = next(o for o in checks.check_research_safe(settings, "good-1") if o.suite == checks.SAFE_SUBSET)
    assert [(f.column, f.observed) for f in subset.failures] == [("rows_not_in_research", 1)]
