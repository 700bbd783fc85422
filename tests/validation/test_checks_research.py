"""The research checks (`checks.check_research`) on their own, on research as the real stages write it: it passes
when research is the shard minus exactly its removals, recorded for research's bytes; it fails when a row that a
list or the keyword rule removes is in research (however it got there), when rows are lost or repeated, or when
research is no longer a drop-in replacement of its input. Failures name the row by its written key, never by
its URL or caption (the shard's key column here holds the URLs)."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from check_support import (
    NAME,
    REMOVED,
    ROWS,
    assert_discloses_none,
    assert_recorded_for,
    failed,
    row_texts,
    shard_path,
    workspace,
)
from conftest import written

from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


@pytest.fixture
def settings(tmp_path):
    settings = workspace(tmp_path)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, NAME)
    pipeline.write_research(settings, NAME)
    return settings


def research_path(settings) -> str:
    return pipeline.Work(settings.work).variant(pipeline.RESEARCH, NAME)


def check(settings):
    no_match, counts = checks.check_research(settings, NAME)
    assert (no_match.suite, counts.suite) == checks.BLOCKING[pipeline.RESEARCH]
    return no_match, counts


def keys(settings, rows) -> list[str]:
    """The written row keys of `rows` of the shard, sorted as a failure lists them."""
    return sorted(written(shard_path(settings), [ROWS[i][0] for i in rows]))


def rematched_without(settings, kind: str) -> None:
    """research written again from removals that lack the matches of `kind`: as a matching bug would leave it."""
    path = pipeline.Work(settings.work).removals(NAME)
    removals = pq.read_table(path)
    pq.write_table(removals.filter(pc.not_equal(removals.column("kind"), kind)), path)
    pipeline.write_research(settings, NAME)


def test_research_written_by_the_stages_passes_and_is_recorded_for_its_bytes(settings):
    no_match, counts = check(settings)
    assert no_match.success and counts.success
    assert pq.read_table(research_path(settings)).column("url").to_pylist() == [
        url for i, (url, _, _) in enumerate(ROWS) if i not in REMOVED
    ]
    assert no_match.statistics["rows_matched_by_reference"] == 2, "the listed URL and the listed image"
    assert_recorded_for(settings, no_match, research_path(settings))
    assert_recorded_for(settings, counts, research_path(settings))


def test_a_row_put_back_into_research_fails_both_checks_naming_only_its_row_key(settings):
    pq.write_table(pq.read_table(shard_path(settings)), research_path(settings))  # nothing removed
    no_match, counts = check(settings)
    assert failed(no_match) == {None: 6}, "each row by the rule that removes it and as a removed row key"
    assert no_match.failures[0].sample_row_keys == keys(settings, REMOVED)
    assert failed(counts) == {"rows_out": {"rows_out": len(ROWS), "rows_in_minus_removed": len(ROWS) - 3}}
    assert "rows_out" in counts.summary() and "rows_in_minus_removed" in counts.summary()
    for outcome in (no_match, counts):
        assert_recorded_for(settings, outcome, research_path(settings))
        assert_discloses_none(settings, outcome, *row_texts(*REMOVED))


def test_a_listed_url_the_matching_missed_is_found_though_the_counts_add_up(settings):
    rematched_without(settings, "url_sha256")
    no_match, counts = check(settings)
    assert counts.success, "research is its shard minus its (wrong) removals"
    assert not no_match.success
    assert no_match.failures[0].sample_row_keys == keys(settings, [1])
    assert_discloses_none(settings, no_match, *row_texts(1))


def test_a_listed_image_the_matching_missed_is_found_though_the_counts_add_up(settings):
    rematched_without(settings, "image_md5")
    no_match, counts = check(settings)
    assert counts.success and not no_match.success
    assert no_match.failures[0].sample_row_keys == keys(settings, [2])
    assert_discloses_none(settings, no_match, *row_texts(2))


def test_a_row_the_keyword_rule_removes_is_found_though_the_counts_add_up(settings):
    rematched_without(settings, "keyword")
    no_match, counts = check(settings)
    assert counts.success and not no_match.success
    assert no_match.failures[0].sample_row_keys == keys(settings, [3])
    assert_discloses_none(settings, no_match, *row_texts(3))


def test_a_row_lost_from_research_fails_the_counts(settings):
    research = pq.read_table(research_path(settings))
    pq.write_table(research.slice(1), research_path(settings))
    no_match, counts = check(settings)
    assert no_match.success
    rows = research.num_rows
    assert failed(counts) == {"rows_out": {"rows_out": rows - 1, "rows_in_minus_removed": rows}}


def test_a_row_published_twice_fails_the_counts(settings):
    research = pq.read_table(research_path(settings))
    pq.write_table(pa.concat_tables([research, research.slice(0, 1)]), research_path(settings))
    no_match, counts = check(settings)
    rows = research.num_rows
    assert failed(counts) == {"rows_out": {"rows_out": rows + 1, "rows_in_minus_removed": rows}}


def test_research_with_a_column_of_another_type_than_its_input_fails_the_counts(settings):
    """A published shard is a drop-in replacement for its input: same columns, types and metadata."""
    research = pq.read_table(research_path(settings))
    column = research.schema.get_field_index("punsafe")
    pq.write_table(
        research.set_column(column, "punsafe", research.column(column).cast(pa.float64())), research_path(settings)
    )
    no_match, counts = check(settings)
    assert no_match.success
    assert failed(counts) == {"schema_differs_from_input": 1}


def test_research_without_the_lookup_hash_index_is_not_checked(settings):
    """The leak search re-derives the index the matching used: without it, the check stops rather than pass."""
    for path in pipeline.index.paths(settings.work, NAME):
        pipeline.storage.remove(path)
    with pytest.raises(pipeline.StageError, match=rf"^shard '{NAME}': its lookup-hash index is missing"):
        check(settings)
