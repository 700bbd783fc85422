"""The per-shard lookup-hash index: reused across list versions while the input is unchanged, and audited by the
research check with code that is independent of the matching query."""

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BLOCKED_URL, removed_keys, written

from relaion_pipeline.core import cache
from relaion_pipeline.match import index, matching
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks
from relaion_pipeline.validation.checks import RESEARCH_NO_MATCH

ROWS = [
    ("http://fine.example/a.jpg", "a bicycle", 0.1),
    (BLOCKED_URL, "secret caption", 0.2),
    ("http://later.example.net/photos/b.jpg", "a lighthouse", 0.3),
    ("http://fine.example/c.jpg", "a kettle", 0.3),
]


@pytest.fixture
def settings(two_shards):
    return two_shards(ROWS)


def _add_list(settings, source: str, expression: str) -> None:
    folder = os.path.join(settings.blocklists, source)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "url_sha256.txt"), "w") as handle:
        handle.write(hashlib.sha256(expression.encode()).hexdigest() + "\n")


def _removed_keys(settings, name):
    """(the shard's own row key, source) of each removal: removals record the row number (and a key that cannot
    disclose a URL, `row_keys`)."""
    table = pq.read_table(pipeline.Work(settings.work).removals(name))
    shard = os.path.join(settings.shards, name + ".parquet")
    raw = removed_keys(settings, name)
    keys = dict(zip(written(shard, raw), raw, strict=True))
    return sorted(
        zip(map(keys.get, table.column("row_key").to_pylist()), table.column("source").to_pylist(), strict=True)
    )


def _shown(settings, name, *keys):
    return written(os.path.join(settings.shards, name + ".parquet"), keys)


def _shard_stages(settings, name):
    pipeline.compute_removals(settings, name)
    pipeline.write_research(settings, name)
    return checks.check_research(settings, name)


def test_a_new_list_version_reuses_the_index_and_matches_like_a_fresh_build(settings):
    pipeline.build_blocklist(settings)
    first = pipeline.compute_removals(settings, "good-1")
    index_path, _ = index.paths(settings.work, "good-1")
    index_bytes = open(index_path, "rb").read()
    assert first.index.reused is False
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf")]

    _add_list(settings, "hrw", "later.example.net/photos/")  # a path prefix of row 2
    pipeline.build_blocklist(settings)
    second = pipeline.compute_removals(settings, "good-1")

    assert second.index.reused is True
    assert open(index_path, "rb").read() == index_bytes, "the index was not rewritten"
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf"), ("good-1-2", "hrw")]
    assert second.rows_in == 4 and second.rows_removed == 2

    os.remove(index_path)  # a fresh build gives the same removals
    third = pipeline.compute_removals(settings, "good-1")
    assert third.index.reused is False
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf"), ("good-1-2", "hrw")]


def test_the_index_is_rebuilt_when_the_input_changes(settings, tmp_path):
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    shard = tmp_path / "shards" / "good-1.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 3), shard)  # the blocked row stays, the last row goes

    stats = pipeline.compute_removals(settings, "good-1")

    assert stats.index.reused is False
    assert stats.rows_in == 3
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf")]


def test_research_check_finds_a_row_the_matching_query_missed(settings, monkeypatch):
    """A matching bug that drops a removal passes the row-count check (removals and research agree) but not the
    no-match check, which derives the row's hashes with the reference implementation."""
    pipeline.build_blocklist(settings)
    original = matching.match_candidates

    def forgetful(*args):
        return original(*args).slice(0, 0)

    monkeypatch.setattr(matching, "match_candidates", forgetful)
    no_match, rows_add_up = _shard_stages(settings, "good-2")

    assert rows_add_up.success, "research is exactly the input minus the (incomplete) removals"
    assert not no_match.success
    record = json.loads(open(pipeline.Work(settings.work).validation(RESEARCH_NO_MATCH, "good-2")).read())
    assert record["failures"][0]["sample_row_keys"] == _shown(settings, "good-2", "good-2-1")
    assert record["statistics"]["rows_matched_by_reference"] == 1
    assert BLOCKED_URL not in json.dumps(record) and "secret caption" not in json.dumps(record)


def test_research_check_finds_a_wrong_index(settings):
    """An index built wrong (as a bug in its kernel would build it) that lacks a row's entries hides the row
    from matching; the check's reference audit of the index, and its direct match of the sampled rows, both
    find it. (An index edited after it was built is not used at all: tests/core/test_cache.py.)"""
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    index_path, record_path = index.paths(settings.work, "good-1")
    record = json.loads(open(record_path).read())
    table = pq.read_table(index_path)
    kept = pa.compute.not_equal(table.column("row_number"), pa.scalar(1, pa.uint32()))
    pq.write_table(table.filter(kept), index_path)  # row 1 (the blocked URL) loses its entries
    cache.put(settings.work, "good-1", cache.INDEX, record["key"]["depends"], extra=record["extra"])  # as built

    no_match, _ = _shard_stages(settings, "good-1")

    assert _removed_keys(settings, "good-1") == [], "the wrong index is reused: the matching misses the row"
    assert not no_match.success
    record = json.loads(open(pipeline.Work(settings.work).validation(RESEARCH_NO_MATCH, "good-1")).read())
    assert record["statistics"]["audit_mismatches"] == 1
    assert record["statistics"]["audited_rows"] == 4
    assert record["failures"][0]["sample_row_keys"] == _shown(settings, "good-1", "good-1-1")


def test_research_check_passes_on_a_correct_run(settings):
    pipeline.build_blocklist(settings)
    no_match, rows_add_up = _shard_stages(settings, "good-1")
    assert no_match.success and rows_add_up.success
    assert no_match.statistics["candidate_rows"] == 1
    assert no_match.statistics["audit_mismatches"] == 0


def test_the_research_check_reads_the_rows_removals_found_only_for_the_same_index_and_list(settings, monkeypatch):
    """removals keeps the rows the index names for the list file beside the index; the research check reads them
    instead of scanning the index again, but finds its own for a list version removals has not run with (and
    then finds the row that version matches), and keeps none of its own."""
    scans = []
    original = index.candidates
    monkeypatch.setattr(index, "candidates", lambda *args: scans.append(args[1]) or original(*args))
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "good-1")
    pipeline.write_research(settings, "good-1")
    kept_path = cache.path(settings.work, "good-1", cache.CANDIDATES)
    assert pq.read_table(kept_path).column("row_number").to_pylist() == [1]
    assert len(scans) == 1

    no_match, _ = checks.check_research(settings, "good-1")
    assert no_match.success and no_match.statistics["candidate_rows"] == 1
    assert len(scans) == 1, "the check read the rows removals found"

    _add_list(settings, "hrw", "later.example.net/photos/")  # a new list version matches row 2 too
    pipeline.build_blocklist(settings)
    kept = open(kept_path, "rb").read()
    no_match, _ = checks.check_research(settings, "good-1")
    assert len(scans) == 2 and not no_match.success
    assert no_match.statistics["candidate_rows"] == 2
    assert no_match.failures[0].sample_row_keys == _shown(settings, "good-1", "good-1-2")
    assert open(kept_path, "rb").read() == kept, "the check keeps nothing"

    pipeline.compute_removals(settings, "good-1")
    pipeline.write_research(settings, "good-1")
    assert pq.read_table(kept_path).column("row_number").to_pylist() == [1, 2]
    no_match, _ = checks.check_research(settings, "good-1")
    assert no_match.success and len(scans) == 3


@pytest.mark.parametrize("by", ["row numbers", "join"])
def test_candidate_rows_taken_by_their_row_numbers_or_by_a_join_give_the_planted_removals(tmp_path, monkeypatch, by):
    """Up to FEW_CANDIDATES candidate rows are filtered by row number inside the shard's scan, more by a join
    with them: both find every planted row of every kind, and nothing else."""
    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.demo_data import demo

    planted = demo.generate(tmp_path / "in", shards=2, rows=400, seed=8)
    if by == "join":
        monkeypatch.setattr(matching, "FEW_CANDIDATES", 0)
    taken = []
    original = matching.candidate_rows_sql
    monkeypatch.setattr(matching, "candidate_rows_sql", lambda i, c: taken.append(type(c)) or original(i, c))
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    pipeline.build_blocklist(settings)
    for name, kinds in planted.items():
        if name.startswith("_"):
            continue
        pipeline.compute_removals(settings, name)
        removed = {key for key, _ in _removed_keys(settings, name)}
        assert removed == {key for keys in kinds.values() for key in keys}, name
    assert taken == [list if by == "row numbers" else str] * 4, "the candidates, then the removed rows' keys"


def test_the_research_check_reads_the_image_hits_removals_found_only_for_the_same_sidecar_and_list(
    tmp_path, monkeypatch
):
    """removals keeps the sidecar rows whose image hash the list file has (keys and hashes, never a URL) beside
    the index; a rerun with the same list and the research check read them instead of joining the sidecar with
    the list again. For a list version removals has not run with, the check joins them itself, finds the row
    that version matches, and keeps nothing."""
    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.demo_data import demo

    planted = demo.generate(tmp_path / "in", shards=1, rows=500, seed=5)
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    name = "joined/part-00000"
    joins = []
    original = matching.image_hits
    monkeypatch.setattr(matching, "image_hits", lambda *args: joins.append(1) or original(*args))
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, name)
    pipeline.write_research(settings, name)
    kept_path = cache.path(settings.work, name, cache.IMAGE_HITS)
    kept = pq.read_table(kept_path)
    assert kept.column_names == ["sidecar_row", "key", "kind", "source", "category", "hash"]
    assert kept.column("key").null_count == kept.num_rows, "no row key (it may be text of a URL): the sidecar row"
    sidecar_keys = pq.read_table(os.path.join(settings.sidecars, name + ".parquet")).column("key").to_pylist()
    image_keys = {k for kind in ("image_md5", "image_sha1", "image_sha256") for k in planted[name][kind]}
    assert {sidecar_keys[r] for r in kept.column("sidecar_row").to_pylist()} == image_keys
    assert len(joins) == 1

    no_match, _ = checks.check_research(settings, name)
    assert no_match.success and len(joins) == 1, "the check read the hits removals found"
    pipeline.compute_removals(settings, name)
    assert len(joins) == 1, "a rerun with the same list read them too"

    removed = {key for key, _ in _removed_keys(settings, name)}
    sidecar = pq.read_table(os.path.join(settings.sidecars, name + ".parquet"))
    key, md5 = next(
        (k, h)
        for k, h in zip(sidecar.column("key").to_pylist(), sidecar.column("md5").to_pylist(), strict=True)
        if h and k not in removed
    )
    os.makedirs(os.path.join(settings.blocklists, "late"))
    with open(os.path.join(settings.blocklists, "late", "image_md5.txt"), "w") as handle:
        handle.write(md5.upper() + "\n")  # a new list version matches one more image, in either case
    pipeline.build_blocklist(settings)
    kept_bytes = open(kept_path, "rb").read()
    no_match, _ = checks.check_research(settings, name)
    assert len(joins) == 2 and not no_match.success
    assert no_match.failures[0].sample_row_keys == _shown(settings, name, key)
    assert open(kept_path, "rb").read() == kept_bytes, "the check keeps nothing"

    pipeline.compute_removals(settings, name)
    pipeline.write_research(settings, name)
    kept = pq.read_table(kept_path).column("sidecar_row").to_pylist()
    assert {sidecar_keys[r] for r in kept} == image_keys | {key}
    no_match, _ = checks.check_research(settings, name)
    assert no_match.success and len(joins) == 3


def test_research_check_finds_a_listed_row_left_in_research_by_an_integer_row_key(settings, tmp_path):
    """With integer row keys, research rows are found by their key's text all the same: a research file that
    still holds the blocked row (key 11) fails the check, naming the key."""
    shard = tmp_path / "shards" / "good-1.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.set_column(2, "key", pa.array([10, 11, 12, 13], pa.int64())), shard)
    pipeline.build_blocklist(settings)
    no_match, _ = _shard_stages(settings, "good-1")
    assert no_match.success and _removed_keys(settings, "good-1") == [("11", "iwf")]

    research = pipeline.Work(settings.work).variant(pipeline.RESEARCH, "good-1")
    pq.write_table(pq.read_table(shard), research)  # the blocked row is back
    no_match, _ = checks.check_research(settings, "good-1")

    assert not no_match.success
    assert no_match.failures[0].sample_row_keys == ["11"]
    assert no_match.failures[0].observed == 2, "listed by the reference's match and still a removed row key"


def test_domain_entries_are_kept_only_while_a_list_has_domain_entries(settings):
    """A list of URL hashes alone cannot match a bare host suffix: the index leaves out its domain entries (a
    fifth of them), the research check's audit expects none, and a list version with a domain entry gets an
    index that has them again, with the domain matched and the audit passing."""
    pipeline.build_blocklist(settings)  # url_sha256 only
    first = pipeline.compute_removals(settings, "good-1")
    index_path, _ = index.paths(settings.work, "good-1")
    scopes = pq.read_table(index_path).column("scope").to_pylist()
    assert index.DOMAIN not in scopes and len(scopes) == first.index.entries
    pipeline.write_research(settings, "good-1")
    assert all(o.success for o in checks.check_research(settings, "good-1")), "the audit expects no domain entry"

    folder = os.path.join(settings.blocklists, "domains")
    os.makedirs(folder)
    with open(os.path.join(folder, "domain.txt"), "w") as handle:
        handle.write("example.net\n")
    pipeline.build_blocklist(settings)
    second = pipeline.compute_removals(settings, "good-1")

    assert second.index.reused is False, "an index without domain entries cannot match domain entries"
    assert index.DOMAIN in pq.read_table(index_path).column("scope").to_pylist()
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf"), ("good-1-2", "domains")]
    pipeline.write_research(settings, "good-1")
    assert all(o.success for o in checks.check_research(settings, "good-1"))


def test_md5_prefixes_are_kept_only_while_a_list_has_url_md5_entries(settings):
    pipeline.build_blocklist(settings)  # url_sha256 only
    first = pipeline.compute_removals(settings, "good-1")
    index_path, _ = index.paths(settings.work, "good-1")
    assert pq.read_table(index_path).column("md5").null_count == first.index.entries

    folder = os.path.join(settings.blocklists, "md5-partner")
    os.makedirs(folder)
    with open(os.path.join(folder, "url_md5.txt"), "w") as handle:
        handle.write(hashlib.md5(b"later.example.net/photos/b.jpg").hexdigest() + "\n")
    pipeline.build_blocklist(settings)
    second = pipeline.compute_removals(settings, "good-1")

    assert second.index.reused is False, "an index without md5 prefixes cannot match url_md5 entries"
    assert pq.read_table(index_path).column("md5").null_count < second.index.entries
    assert _removed_keys(settings, "good-1") == [("good-1-1", "iwf"), ("good-1-2", "md5-partner")]
    no_match, rows_add_up = (pipeline.write_research(settings, "good-1"), checks.check_research(settings, "good-1"))[1]
    assert no_match.success and rows_add_up.success
