"""The Great Expectations layer (`validation.quality`) on its own: what a check's outcome says, for frames as the
checks build them."""

import pandas as pd
import pytest

from relaion_pipeline.validation import quality


@pytest.fixture(scope="module")
def gx():
    return quality.expectations()


def test_zero_counts_pass_and_the_page_names_the_suite(gx):
    frame = pd.DataFrame([{"url_missing": 0, "punsafe_out_of_range": 0}])
    expectations = [gx.ExpectColumnMaxToBeBetween(column=c, min_value=0, max_value=0) for c in frame.columns]
    outcome = quality.validate("input_shard_well_formed", "part-1", frame, expectations)
    assert outcome.success and outcome.evaluated == 2 and outcome.failures == []
    assert "input_shard_well_formed" in outcome.html
    assert outcome.summary() == "input_shard_well_formed: all 2 expectations passed"


def test_a_count_above_zero_fails_naming_its_column_and_the_count(gx):
    frame = pd.DataFrame([{"url_missing": 3, "punsafe_out_of_range": 0}])
    expectations = [gx.ExpectColumnMaxToBeBetween(column=c, min_value=0, max_value=0) for c in frame.columns]
    outcome = quality.validate("input_shard_well_formed", "part-1", frame, expectations)
    assert not outcome.success
    assert [(f.column, f.observed, f.exception) for f in outcome.failures] == [("url_missing", 3, None)]
    assert "url_missing" in outcome.summary() and "observed=3" in outcome.summary()


def test_two_counts_that_should_be_equal_fail_naming_both_columns_and_their_values(gx):
    frame = pd.DataFrame({"rows_out": [5], "rows_in_minus_removed": [4]})
    expectation = gx.ExpectColumnPairValuesToBeEqual(column_A="rows_out", column_B="rows_in_minus_removed")
    outcome = quality.validate("research_rows_add_up", "part-1", frame, [expectation])
    assert [(f.column, f.observed) for f in outcome.failures] == [
        ("rows_out", {"rows_out": 5, "rows_in_minus_removed": 4})
    ]
    assert "(rows_out) unexpected=1 observed={'rows_out': 5, 'rows_in_minus_removed': 4}" in outcome.summary()


def test_offending_rows_are_named_by_at_most_five_row_keys(gx):
    frame = pd.DataFrame(
        {"row_key": [f"k{i}" for i in range(8)], "punsafe": [0.1, 0.9, 0.8, 0.2, 0.7, 0.95, 0.6, 0.99]}
    )
    expectation = gx.ExpectColumnValuesToBeBetween(column="punsafe", min_value=0, max_value=0.45)
    outcome = quality.validate("research_safe_below_threshold", "part-1", frame, [expectation])
    (failure,) = outcome.failures
    assert failure.unexpected_count == 6
    assert failure.sample_row_keys == ["k1", "k2", "k4", "k5", "k6"]


def test_an_expectation_that_cannot_run_fails_instead_of_passing(gx):
    """A check that names a column its frame lacks (a misconfigured check) fails, with GX's error: it never
    lets a shard through unchecked."""
    frame = pd.DataFrame([{"url_missing": 0}])
    expectation = gx.ExpectColumnMaxToBeBetween(column="not_there", min_value=0, max_value=0)
    outcome = quality.validate("input_shard_well_formed", "part-1", frame, [expectation])
    assert not outcome.success
    (failure,) = outcome.failures
    assert failure.column == "not_there" and failure.exception
