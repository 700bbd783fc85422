"""The research check's leak search (`validation.leaks.find`) on its own: it finds a published listed row
without the matching query, so a bug there (or in the index) cannot publish one unseen."""

import pyarrow.parquet as pq
from conftest import BLOCKED_URL

from relaion_pipeline.core import schemas, shards
from relaion_pipeline.lists import blocklists
from relaion_pipeline.match import matching
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import leaks

ROWS = [
    ("http://fine.example/a.jpg", "a", 0.1),
    (BLOCKED_URL, "secret caption", 0.1),
    ("http://fine.example/b.jpg", "b", 0.2),
]


def _find(settings, research_path: str):
    work = pipeline.Work(settings.work)
    shard = shards.resolve(settings.shards, "good-1")
    _, blocklist_path = blocklists.read_current(work.blocklist_dir)
    con = matching.connect(settings)
    try:
        return leaks.find(settings, con, "good-1", shard, blocklist_path, research_path)
    finally:
        con.close()


def test_a_listed_row_the_matching_query_missed_is_found(two_shards):
    settings = two_shards(ROWS)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    work = pipeline.Work(settings.work)
    pq.write_table(schemas.REMOVALS.empty_table(), work.removals("good-1"))  # as a matching bug would leave it
    shard_path = f"{settings.shards}/good-1.parquet"
    found, audit = _find(settings, shard_path)  # research: the whole shard, as written from those removals
    assert sorted({leak[0] for leak in found}) == ["good-1-1"]  # the shard's own key (the check writes it hashed)
    assert audit["rows_matched_by_reference"] == 1 and audit["audit_mismatches"] == 0
    assert BLOCKED_URL not in repr(found) and "secret caption" not in repr(found)


def test_research_written_from_correct_removals_has_no_leak(two_shards):
    settings = two_shards(ROWS)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    pipeline.write_research(settings, "good-1")
    found, audit = _find(settings, pipeline.Work(settings.work).variant(pipeline.RESEARCH, "good-1"))
    assert found == [] and audit["rows_matched_by_reference"] == 1 and audit["audited_rows"] == 3
