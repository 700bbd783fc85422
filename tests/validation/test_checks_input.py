"""The input check (`checks.check_input`) on its own: a shard whose values are out of range or whose rows cannot
be told apart fails, one expectation per rule, naming the rule, how many rows break it and a few of their row
keys (as the pipeline writes them), never a URL or caption; a well-formed shard passes, recorded for its bytes."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from check_support import assert_discloses_none, assert_recorded_for, failed
from conftest import written

from relaion_pipeline.core.schemas import ShardSchemaError
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.validation import checks

NAME = "part-1"
URLS = ["http://fine.example/a.jpg", "http://fine.example/b.jpg", "http://fine.example/c.jpg"]
CAPTIONS = ["a bicycle", "a lighthouse", "a teapot"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    (tmp_path / "shards").mkdir()
    return Settings(shards=str(tmp_path / "shards"), work=str(tmp_path / "work"))


def shard(settings: Settings, **changed) -> str:
    """Write shard NAME, a Re-LAION style shard with every column an input rule reads, three well-formed rows
    unless `changed` replaces a column's values; return its path."""
    columns = {
        "url": pa.array(URLS),
        "caption": pa.array(CAPTIONS),
        "key": pa.array([f"{NAME}-{i}" for i in range(3)]),
        "punsafe": pa.array([0.0, 0.5, 1.0], pa.float32()),
        "pwatermark": pa.array([0.1, 0.2, 0.3], pa.float32()),
        "similarity": pa.array([-1.0, 0.3, 1.0]),
        "original_width": pa.array([640, 1, 1024], pa.int32()),
        "original_height": pa.array([480, 1, 768], pa.int32()),
    }
    columns |= {
        column: values if isinstance(values, pa.Array) else pa.array(values, columns[column].type)
        for column, values in changed.items()
    }
    path = f"{settings.shards}/{NAME}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def check(settings: Settings):
    (outcome,) = checks.check_input(settings, NAME)
    assert outcome.suite == checks.INPUT_WELL_FORMED and outcome.partition == NAME
    return outcome


def assert_fails_on(settings: Settings, path: str, rule: str, rows: list[int], *hidden: str) -> None:
    """The check fails on exactly `rule`, counting `rows`, showing their written row keys; nothing of theirs
    but the key is in its message, record or page."""
    outcome = check(settings)
    assert not outcome.success
    assert failed(outcome) == {rule: len(rows)}
    (failure,) = outcome.failures
    assert failure.sample_row_keys == written(path, [f"{NAME}-{i}" for i in rows])
    assert rule in outcome.summary() and f"observed={len(rows)}" in outcome.summary()
    assert_recorded_for(settings, outcome, path)
    assert_discloses_none(settings, outcome, *hidden, *(URLS[i] for i in rows), *(CAPTIONS[i] for i in rows))


def test_a_well_formed_shard_passes_every_rule_and_is_recorded_for_its_bytes(settings):
    path = shard(settings)
    outcome = check(settings)
    assert outcome.success and outcome.failures == []
    assert outcome.evaluated == len(checks.input_counts.RULES) + 1, "every range rule and unique row keys"
    assert_recorded_for(settings, outcome, path)


def test_a_row_without_a_url_fails_the_input_check(settings):
    path = shard(settings, url=[URLS[0], None, "  "])
    assert_fails_on(settings, path, "url_missing", [1, 2])


def test_a_url_too_long_to_be_an_image_link_fails_the_input_check(settings):
    long_url = "http://fine.example/" + "x" * 4096
    path = shard(settings, url=[URLS[0], URLS[1], long_url])
    assert_fails_on(settings, path, "url_too_long", [2], long_url[-100:])


def test_a_safety_score_outside_zero_to_one_fails_the_input_check(settings):
    path = shard(settings, punsafe=[1.5, -0.1, math.nan])
    assert_fails_on(settings, path, "punsafe_out_of_range", [0, 1, 2])


def test_a_missing_safety_score_is_not_out_of_range(settings):
    """A null score is a score not known (research-safe's missing_score rule decides), not a broken row."""
    shard(settings, punsafe=[None, 0.5, None])
    assert check(settings).success


def test_a_watermark_score_outside_zero_to_one_fails_the_input_check(settings):
    path = shard(settings, pwatermark=[0.1, 1.01, 0.3])
    assert_fails_on(settings, path, "pwatermark_out_of_range", [1])


def test_a_clip_similarity_outside_minus_one_to_one_fails_the_input_check(settings):
    path = shard(settings, similarity=[0.3, 0.3, -1.5])
    assert_fails_on(settings, path, "similarity_out_of_range", [2])


def test_an_image_width_that_is_not_positive_fails_the_input_check(settings):
    path = shard(settings, original_width=[0, 640, -2])
    assert_fails_on(settings, path, "width_not_positive", [0, 2])


def test_an_image_size_that_is_not_a_number_or_infinite_fails_the_input_check(settings):
    """LAION's plain shards hold WIDTH and HEIGHT as floats: NaN compares above every number in DuckDB."""
    shard(
        settings,
        original_width=pa.array([math.nan, 640.0, 1024.0]),
        original_height=pa.array([480.0, math.inf, 768.0]),
    )
    outcome = check(settings)
    assert not outcome.success and failed(outcome) == {"width_not_positive": 1, "height_not_positive": 1}


def test_an_image_height_that_is_not_positive_fails_the_input_check(settings):
    path = shard(settings, original_height=[480, 0, 768])
    assert_fails_on(settings, path, "height_not_positive", [1])


def test_two_rows_with_one_row_key_fail_the_input_check(settings):
    path = shard(settings, key=[f"{NAME}-0", f"{NAME}-1", f"{NAME}-1"])
    assert_fails_on(settings, path, "duplicate_row_keys", [1])


def test_a_score_column_that_is_not_numeric_stops_the_check_naming_the_file_and_column(settings):
    path = shard(settings)
    table = pq.read_table(path)
    pq.write_table(table.set_column(3, "punsafe", pa.array(["0.1", "high", "0.3"])), path)
    with pytest.raises(ShardSchemaError) as raised:
        checks.check_input(settings, NAME)
    assert str(raised.value) == f"{path}: column 'punsafe' (punsafe) must be numeric, found string"


def test_the_record_follows_the_shard_file_it_checked(settings):
    """The counts are kept while the shard file is unchanged: a shard replaced after it passed is counted and
    recorded again, so its old pass is never taken for the new bytes."""
    path = shard(settings)
    assert check(settings).success
    shard(settings, original_width=[640, 0, 1024])
    outcome = check(settings)
    assert failed(outcome) == {"width_not_positive": 1}
    assert_recorded_for(settings, outcome, path)
