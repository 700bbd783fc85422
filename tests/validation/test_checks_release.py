"""The release check (`checks.check_release`) on its own, on a release published from one checked shard, with the
problems and unchecked shards found as the release asset finds them: it passes when the published files verify
and every published shard passed its checks on the bytes in the work location; it fails, naming the problem or
the shard, when either is not so."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from check_support import NAME, REMOVED, assert_discloses_none, failed, record, row_texts, workspace

from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


@pytest.fixture
def published(tmp_path):
    """The workspace's shard through every stage and check, then published: (settings, manifest)."""
    settings = workspace(tmp_path)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, NAME)
    pipeline.write_research(settings, NAME)
    pipeline.write_research_safe(settings, NAME)
    outcomes = [*checks.check_input(settings, NAME), *checks.check_research(settings, NAME)]
    assert all(o.success for o in outcomes + checks.check_research_safe(settings, NAME))
    return settings, release.publish(settings, [NAME])


def check(settings, manifest):
    """The release check on what `release.check` finds, as the release asset runs it."""
    problems, unchecked = release.check(settings, manifest)
    return checks.check_release(settings, problems, unchecked, manifest["version"])


def _replace(path: Path, table) -> None:
    """A new file at `path` (as a copy over it, an upload or a rerun's rename makes it)."""
    pq.write_table(table, path.with_name("new.parquet"), row_group_size=1)
    os.replace(path.with_name("new.parquet"), path)


def test_a_release_of_checked_shards_whose_files_verify_passes(published):
    settings, manifest = published
    outcome = check(settings, manifest)
    assert outcome.success and outcome.partition == manifest["version"]
    written = record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])
    assert written["success"] and written["problems"] == [] and written["unchecked"] == []


def test_a_published_file_replaced_after_publishing_fails_naming_it(published):
    settings, manifest = published
    research = Path(manifest["path"]) / "research" / f"{NAME}.parquet"
    _replace(research, pq.read_table(research).slice(1))
    outcome = check(settings, manifest)
    problems = record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])["problems"]
    assert failed(outcome) == {"verify_problems": len(problems)} and problems
    assert all(f"research/{NAME}.parquet" in problem for problem in problems), problems
    assert_discloses_none(settings, outcome, *row_texts(*REMOVED))


def test_a_published_file_is_the_work_file_read_only_and_an_edit_in_place_fails_both(published):
    """Publishing links the work file into the release (no copy) and makes it read-only; an edit in place
    anyway (root ignores the mode) changes both names of the one file, and the check names both causes."""
    settings, manifest = published
    research = Path(manifest["path"]) / "research" / f"{NAME}.parquet"
    work = Path(pipeline.Work(settings.work).variant(pipeline.RESEARCH, NAME))
    assert research.stat().st_ino == work.stat().st_ino and research.stat().st_nlink == 2
    assert research.stat().st_mode & 0o222 == 0, "nobody may write it"
    assert check(settings, manifest).success
    table = pq.read_table(research)
    pq.write_table(table.slice(1), research)  # as root: the mode does not stop it
    outcome = check(settings, manifest)
    problems = record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])["problems"]
    assert failed(outcome) == {"verify_problems": len(problems), "shards_without_passed_checks": 1} and problems
    assert all(f"research/{NAME}.parquet" in problem for problem in problems), problems


def test_a_published_shard_whose_checks_ran_on_other_bytes_fails_naming_it(published):
    """The work location's research-safe changed after its checks passed (a rerun racing the release): the
    published shard is no longer known checked."""
    settings, manifest = published
    safe = Path(pipeline.Work(settings.work).variant(pipeline.RESEARCH_SAFE, NAME))
    _replace(safe, pq.read_table(safe))  # the same rows, other bytes, in a new file: the published one stays
    outcome = check(settings, manifest)
    assert failed(outcome) == {"shards_without_passed_checks": 1}
    assert record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])["unchecked"] == [NAME]
