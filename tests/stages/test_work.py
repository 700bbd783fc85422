"""`Work.record`, the one way to read what a stage did for a shard: the record, or a StageError that says why
there is none (the stage's own recorded failure, the stage to run, or the record's file and field)."""

import json
import re
from pathlib import Path

import pytest

from relaion_pipeline.stages.work import StageError, Work


def test_a_stage_without_a_record_names_its_recorded_failure_or_the_stage_to_run(tmp_path):
    work = Work(str(tmp_path))
    with pytest.raises(StageError, match="shard 's': no removals output yet: materialize 'removals'"):
        work.record("removals", "s")
    failure = Path(work.failure("removals", "s"))
    failure.parent.mkdir(parents=True)
    failure.write_text(json.dumps({"error": "s.parquet: column 'url' must hold text", "type": "ShardError"}))
    with pytest.raises(StageError, match="shard 's': removals failed: s.parquet: column 'url' must hold text"):
        work.record("removals", "s")
    failure.write_text('{"error": ')  # cut short: the failure still holds, and says so
    with pytest.raises(StageError, match=re.escape(f"removals failed: its failure record {failure} cannot be read")):
        work.record("removals", "s")


def test_a_record_this_version_cannot_read_names_its_file_and_the_stage_to_run_again(tmp_path):
    work = Work(str(tmp_path))
    stats = Path(work.stats("research", "s"))
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"record": "research", "version": 1, "shard": "s"}))
    with pytest.raises(StageError) as error:
        work.record("research", "s")
    assert str(error.value).startswith(f"shard 's': {stats}: field 'blocklist_version' is missing")
    assert str(error.value).endswith("materialize 'research' for this partition again")
