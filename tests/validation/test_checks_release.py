"""The release check (`checks.check_release`) on its own, on a release published from one checked shard, with the
problems and unchecked shards found as the release asset finds them: it passes when the published files verify
and every published shard passed its checks on the bytes in the work location; it fails, naming the problem or
the shard, when either is not so."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from check_support import NAME, REMOVED, assert_discloses_none, failed, record, row_texts, workspace

from relaion_pipeline import status
from relaion_pipeline.publishing import release, verification
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
    """The release check on what `verification.verify` and `status.checks_passed` find (as the release asset)."""
    _, problems = verification.verify(manifest["path"])
    unchecked = [name for name in manifest["shards"] if not status.checks_passed(settings, name)[0]]
    return checks.check_release(settings, problems, unchecked, manifest["version"])


def test_a_release_of_checked_shards_whose_files_verify_passes(published):
    settings, manifest = published
    outcome = check(settings, manifest)
    assert outcome.success and outcome.partition == manifest["version"]
    written = record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])
    assert written["success"] and written["problems"] == [] and written["unchecked"] == []


def test_a_published_file_changed_after_publishing_fails_naming_it(published):
    settings, manifest = published
    research = Path(manifest["path"]) / "research" / f"{NAME}.parquet"
    table = pq.read_table(research)
    pq.write_table(table.slice(1), research)
    outcome = check(settings, manifest)
    problems = record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])["problems"]
    assert failed(outcome) == {"verify_problems": len(problems)} and problems
    assert all(f"research/{NAME}.parquet" in problem for problem in problems), problems
    assert_discloses_none(settings, outcome, *row_texts(*REMOVED))


def test_a_published_shard_whose_checks_ran_on_other_bytes_fails_naming_it(published):
    """The work location's research-safe changed after its checks passed (a rerun racing the release): the
    published shard is no longer known checked."""
    settings, manifest = published
    safe = pipeline.Work(settings.work).variant(pipeline.RESEARCH_SAFE, NAME)
    pq.write_table(pq.read_table(safe), safe, row_group_size=1)  # the same rows, other bytes
    outcome = check(settings, manifest)
    assert failed(outcome) == {"shards_without_passed_checks": 1}
    assert record(settings, checks.RELEASE_MATCHES_FILES, manifest["version"])["unchecked"] == [NAME]
