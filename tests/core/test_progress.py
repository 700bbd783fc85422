"""Progress inside long stages: the index build, the variants' pass over the shard and the release say how far
they are, in `relaion run`'s output and in the Dagster run's log the UI shows, and short work says nothing."""

import logging

import dagster as dg
import pytest

from relaion_pipeline.cli import main
from relaion_pipeline.core import progress
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo


@pytest.fixture
def lines():
    """The progress lines logged while a test runs."""
    found: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            found.append(record.getMessage())

    handler = Keep()
    progress.log.addHandler(handler)
    level = progress.log.level
    progress.log.setLevel(logging.INFO)
    yield found
    progress.log.removeHandler(handler)
    progress.log.setLevel(level)


def test_long_work_says_how_far_it_is_and_when_it_is_done(lines, monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 0.0)
    tracker = progress.Progress("shard-7: lookup-hash index", 1_000_000, "rows")
    tracker.update(250_000)
    tracker.update(1_000_000)
    tracker.finish()
    assert lines[0].startswith("shard-7: lookup-hash index: 250,000 of 1,000,000 rows (25%, ")
    assert "s left)" in lines[0], "an estimate of what is left"
    assert lines[1].startswith("shard-7: lookup-hash index: 1,000,000 of 1,000,000 rows (100%, ")
    assert lines[2].startswith("shard-7: lookup-hash index: all 1,000,000 rows done in ")


def test_short_work_says_nothing(lines):
    tracker = progress.Progress("release: shards' files placed", 4, "files")
    for done in range(1, 5):
        tracker.update(done)
    tracker.finish()
    assert lines == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_relaion_run_prints_the_progress_of_the_index_and_the_release_and_dagster_logs_it(
    tmp_path, monkeypatch, capsys, workers
):
    demo.generate(tmp_path / "in", shards=2, rows=700, seed=4)
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("RELAION_PROGRESS_SECONDS", "0")  # a line at every step: the demo's shards are small
    code = main(["run", "--shards", settings.shards, "--blocklists", settings.blocklists, "--sidecars",
                 settings.sidecars, "--work", settings.work, "--release", settings.release, "--workers", workers])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("joined/part-00000", "plain/part-00001"):
        assert f"      {name}: lookup-hash index: 700 of 700 rows (100%, " in out
        assert f"      {name}: research: 700 of 700 rows (100%, " in out  # and research-safe in its pass
    assert "      release: shards' files placed: 4 of 4 files (100%, " in out
    assert progress.EVERY == 10.0, "the setting lasts as long as the run"

    instance = dg.DagsterInstance.from_config(settings.dagster_home)
    logged = [
        entry.user_message for run in instance.get_runs() for entry in instance.all_logs(run.run_id)
    ]  # what the UI shows of each run
    assert any("joined/part-00000: lookup-hash index: 700 of 700 rows" in message for message in logged)
    assert any("release: shards' files placed: 4 of 4 files" in message for message in logged)
