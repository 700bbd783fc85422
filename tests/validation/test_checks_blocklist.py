"""The blocklist check (`checks.check_blocklist`) on its own: the merged list as the blocklist stage writes it
passes, recorded for its bytes; an entry that the parser should never have let through (the merged file changed
or a parser bug) fails, named by the rule it breaks and how many entries break it. Malformed hashes, malformed
domains and entries without a source: tests/validation/test_failures.py."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from check_support import assert_recorded_for, failed, workspace

from relaion_pipeline.lists import blocklists
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks

SHA256 = "ab" * 32


@pytest.fixture
def settings(tmp_path):
    settings = workspace(tmp_path)
    pipeline.build_blocklist(settings)
    return settings


def merged(settings) -> str:
    return blocklists.read_current(pipeline.Work(settings.work).blocklist_dir)[1]


def with_entries(settings, *entries: tuple) -> str:
    """The merged list with `entries` (kind, value, source, category, distance) added, as a changed file or a
    parser bug would leave it; its path."""
    path = merged(settings)
    table = pq.read_table(path)
    added = pa.table(dict(zip(table.column_names, zip(*entries, strict=True), strict=True)), schema=table.schema)
    pq.write_table(pa.concat_tables([table, added]), path)
    return path


def check(settings):
    (outcome,) = checks.check_blocklist(settings)
    assert outcome.suite == checks.BLOCKLIST_WELL_FORMED
    return outcome


def assert_fails_on(settings, rule: str, entries: int) -> None:
    outcome = check(settings)
    assert failed(outcome) == {rule: entries}
    assert f"({rule}) unexpected=None observed={entries}" in outcome.summary()


def test_the_merged_list_the_stage_writes_passes_and_is_recorded_for_its_bytes(settings):
    outcome = check(settings)
    assert outcome.success and outcome.evaluated == 6
    assert outcome.partition == blocklists.read_current(pipeline.Work(settings.work).blocklist_dir)[0]
    assert_recorded_for(settings, outcome, merged(settings))


def test_an_entry_of_a_kind_the_pipeline_does_not_match_fails(settings):
    with_entries(settings, ("url_sha1", "ab" * 20, "iwf", "csam", None))
    outcome = check(settings)
    assert failed(outcome) == {"unknown_kinds": 1, "malformed_hashes": 1}, "no hash length is known for it either"
    assert "(unknown_kinds) unexpected=None observed=1" in outcome.summary()


def test_an_entry_without_a_kind_fails(settings):
    with_entries(settings, (None, SHA256, "iwf", "csam", None))
    assert_fails_on(settings, "unknown_kinds", 1)


def test_a_hash_entry_without_a_value_fails(settings):
    with_entries(settings, ("url_sha256", None, "iwf", "csam", None), ("image_md5", None, "iwf", "csam", None))
    assert_fails_on(settings, "malformed_hashes", 2)


def test_a_domain_entry_without_a_value_fails(settings):
    with_entries(settings, ("domain", None, "opt-out", "opt-out", None))
    assert_fails_on(settings, "malformed_domains", 1)


def test_an_entry_without_a_category_fails(settings):
    with_entries(settings, ("url_sha256", SHA256, "iwf", None, None), ("url_sha256", "cd" * 32, "iwf", " ", None))
    assert_fails_on(settings, "entries_without_category", 2)


def test_a_pdq_entry_without_a_valid_match_distance_fails(settings):
    with_entries(settings, ("pdq", "0" * 64, "iwf", "csam", None), ("pdq", "f" * 64, "iwf", "csam", 64))
    assert_fails_on(settings, "pdq_without_a_valid_distance", 2)


def test_a_list_that_changed_after_it_passed_is_recorded_for_its_new_bytes(settings):
    assert check(settings).success
    path = with_entries(settings, ("url_sha256", SHA256, "iwf", "csam", None))
    outcome = check(settings)
    assert outcome.success
    assert_recorded_for(settings, outcome, path)
