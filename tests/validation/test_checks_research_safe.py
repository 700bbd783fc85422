"""The research-safe checks (`checks.check_research_safe`) on their own, on research-safe as the real stages write
it: it passes when research-safe is research minus exactly its rows above the safe threshold, recorded for its
bytes; it fails when an unsafe row (or one without a score, when those are dropped) is in it, when a safe row is
missing, or when it is no longer a drop-in replacement of its input. Failures name rows by their written keys,
never by URL or caption (the shard's key column here holds the URLs)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from check_support import (
    NAME,
    REMOVED,
    ROWS,
    UNSAFE,
    assert_discloses_none,
    assert_recorded_for,
    failed,
    row_texts,
    shard_path,
    with_settings,
    workspace,
)
from conftest import written

from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


def stages(settings):
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, NAME)
    pipeline.write_research(settings, NAME)
    pipeline.write_research_safe(settings, NAME)
    return settings


@pytest.fixture
def settings(tmp_path):
    return stages(workspace(tmp_path))


def path(settings, variant=pipeline.RESEARCH_SAFE) -> str:
    return pipeline.Work(settings.work).variant(variant, NAME)


def check(settings):
    below, adds_up = checks.check_research_safe(settings, NAME)
    assert (below.suite, adds_up.suite) == checks.BLOCKING[pipeline.RESEARCH_SAFE]
    return below, adds_up


def urls_of(rows) -> list[str]:
    return [ROWS[i][0] for i in rows]


def test_research_safe_written_by_the_stages_passes_and_is_recorded_for_its_bytes(settings):
    below, adds_up = check(settings)
    assert below.success and adds_up.success
    kept = [i for i in range(len(ROWS)) if i not in REMOVED + UNSAFE]
    assert pq.read_table(path(settings)).column("url").to_pylist() == urls_of(kept)
    assert_recorded_for(settings, below, path(settings))
    assert_recorded_for(settings, adds_up, path(settings))


def test_an_unsafe_row_left_in_research_safe_fails_naming_its_written_key(settings):
    research = pq.read_table(path(settings, pipeline.RESEARCH))
    pq.write_table(research, path(settings))  # the unsafe row 4 kept
    below, adds_up = check(settings)
    assert [(f.column, f.unexpected_count) for f in below.failures] == [("score", 1)]
    assert below.failures[0].sample_row_keys == written(shard_path(settings), urls_of(UNSAFE))
    rows = research.num_rows
    assert failed(adds_up) == {"safe_rows": {"safe_rows": rows, "research_minus_dropped": rows - 1}}
    assert_discloses_none(settings, below, *row_texts(*UNSAFE))


def test_a_removed_row_in_research_safe_fails_without_disclosing_its_url_or_caption(settings):
    pq.write_table(pq.read_table(shard_path(settings)), path(settings))  # the whole input
    below, adds_up = check(settings)
    assert below.failures[0].sample_row_keys == written(shard_path(settings), urls_of([1, 3, 4]))
    assert failed(adds_up)["rows_not_in_research"] == len(REMOVED)
    for outcome in (below, adds_up):
        assert_recorded_for(settings, outcome, path(settings))
        assert_discloses_none(settings, outcome, *row_texts(*REMOVED))


def test_a_row_without_a_score_left_in_research_safe_fails_when_such_rows_are_dropped(tmp_path):
    settings = stages(workspace(tmp_path, missing_score="drop"))
    research = pq.read_table(path(settings, pipeline.RESEARCH))
    pq.write_table(
        research.filter(pa.array([url != ROWS[4][0] for url in research.column("url").to_pylist()])), path(settings)
    )
    below, _ = check(settings)
    assert [(f.expectation, f.column) for f in below.failures] == [("expect_column_values_to_not_be_null", "score")]
    assert below.failures[0].sample_row_keys == written(shard_path(settings), urls_of([5]))


def test_a_safe_row_missing_from_research_safe_fails_the_counts(settings):
    safe = pq.read_table(path(settings))
    pq.write_table(safe.slice(1), path(settings))
    below, adds_up = check(settings)
    assert below.success
    assert failed(adds_up) == {
        "safe_rows": {"safe_rows": safe.num_rows - 1, "research_minus_dropped": safe.num_rows},
        "safe_rows_left_out": 1,
    }


def test_research_safe_written_with_a_lower_threshold_than_the_check_fails_the_counts(tmp_path):
    """research-safe holds research minus its unsafe rows, nothing else: safe rows left out by a stricter
    threshold than the one it is checked with are missing rows, even when the stage's own count agrees."""
    settings = workspace(tmp_path)
    stages(with_settings(settings, safe_threshold=0.15))  # also leaves out row 6 (0.2)
    below, adds_up = check(settings)
    assert below.success
    assert failed(adds_up) == {"safe_rows_left_out": 1}
    assert "safe_rows_left_out" in adds_up.summary() and "observed=1" in adds_up.summary()


def test_research_safe_with_a_column_of_another_type_than_its_input_fails_the_counts(settings):
    safe = pq.read_table(path(settings))
    column = safe.schema.get_field_index("punsafe")
    pq.write_table(safe.set_column(column, "punsafe", safe.column(column).cast(pa.float64())), path(settings))
    below, adds_up = check(settings)
    assert below.success
    assert failed(adds_up) == {"schema_differs_from_input": 1}


def test_a_row_tagged_nsfw_left_in_research_safe_fails(tmp_path):
    """Shards without punsafe (LAION-5B plain) are held to their NSFW tag: a tagged row in research-safe fails."""
    settings = workspace(tmp_path, skip_image_matching=True)
    (tmp_path / "sidecars" / f"{NAME}.parquet").unlink()
    table = pa.table(
        {
            "SAMPLE_ID": pa.array([11, 12, 13], pa.int64()),
            "URL": urls_of([0, 4, 6]),
            "TEXT": ["a bicycle", "a teapot", "a lighthouse"],
            "NSFW": ["UNLIKELY", "NSFW", "UNSURE"],
        }
    )
    pq.write_table(table, shard_path(settings))
    stages(settings)
    assert all(outcome.success for outcome in check(settings))
    pq.write_table(pq.read_table(path(settings, pipeline.RESEARCH)), path(settings))
    below, adds_up = check(settings)
    assert [(f.column, f.unexpected_count, f.sample_row_keys) for f in below.failures] == [("tag", 1, ["12"])]
    assert failed(adds_up) == {"safe_rows": {"safe_rows": 3, "research_minus_dropped": 2}}


def test_a_float32_score_just_above_a_threshold_is_above_it_for_the_stages_and_the_checks_alike(tmp_path):
    """0.1 stored as float32 is 0.10000000149..., above a threshold of 0.1: research-safe (pyarrow) leaves the row
    out, and the checks (DuckDB, which would compare `punsafe > 0.1` as FLOAT) agree; so does the keyword rule
    for 0.97 (0.97000002...)."""
    settings = stages(workspace(tmp_path, safe_threshold=0.1, research_threshold=0.97))
    below, adds_up = check(settings)
    assert below.success and adds_up.success, (below.summary(), adds_up.summary())
    assert ROWS[0][0] not in pq.read_table(path(settings)).column("url").to_pylist()
    research = pq.read_table(path(settings, pipeline.RESEARCH)).column("url").to_pylist()
    assert ROWS[3][0] not in research, "the keyword row scored 0.97 as float32 is above 0.97"
    no_match, rows_add_up = checks.check_research(settings, NAME)
    assert no_match.success and rows_add_up.success
