"""Typed records on disk (`core.records`): a record reads back as it was written, and anything else (another
record, another version, a missing, unknown or mistyped field, a file that is not JSON) is refused naming the
file and the field, without echoing the text it found."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from relaion_pipeline.core.records import Record, RecordError


@dataclass(frozen=True)
class Inner:
    reused: bool
    seconds: float


@dataclass(frozen=True)
class Sample(Record):
    NAME: ClassVar[str] = "sample"
    VERSION: ClassVar[int] = 2

    rows: int
    share: float
    label: str
    how: Literal["required", "skipped"]
    inner: Inner
    counts: dict[str, int]
    nested: dict[str, dict[str, int]]
    warnings: list[str]
    fingerprint: dict
    maybe: Inner | None
    note: str | None = None


GOOD = Sample(
    rows=3,
    share=0.5,
    label="x",
    how="required",
    inner=Inner(reused=True, seconds=1.5),
    counts={"a": 1},
    nested={"s": {"url": 2}},
    warnings=["w"],
    fingerprint={"bytes": 3, "modified": "t"},
    maybe=None,
)


def written(tmp_path, record: Record = GOOD) -> tuple[str, dict]:
    path = str(tmp_path / "sample.json")
    record.write(path)
    return path, json.loads(open(path).read())


def test_a_record_reads_back_equal_to_what_was_written_with_its_name_and_version(tmp_path):
    path, data = written(tmp_path)
    assert (data["record"], data["version"]) == ("sample", 2)
    assert Sample.read(path) == GOOD
    with_note = Sample(**{**GOOD.__dict__, "note": "n", "maybe": Inner(reused=False, seconds=2.0)})
    assert Sample.read(written(tmp_path, with_note)[0]) == with_note


def test_an_integer_is_taken_for_a_number_but_nothing_else_is_taken_for_another_type(tmp_path):
    path, data = written(tmp_path)
    data["share"] = 1
    (tmp_path / "sample.json").write_text(json.dumps(data))
    assert Sample.read(path).share == 1.0


def rewrite(tmp_path, change) -> str:
    path, data = written(tmp_path)
    change(data)
    (tmp_path / "sample.json").write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "change, field, expected",
    [
        (lambda d: d.update(rows="3"), "'rows'", "must be an integer, found text of 1 characters"),
        (lambda d: d.update(rows=True), "'rows'", "must be an integer, found true"),
        (lambda d: d.update(rows=3.5), "'rows'", "must be an integer, found the number 3.5"),
        (lambda d: d.update(share=None), "'share'", "must be a number, found null"),
        (lambda d: d.update(how="maybe"), "'how'", "must be one of 'required', 'skipped'"),
        (lambda d: d["inner"].update(reused=1), "'inner.reused'", "must be true or false, found the number 1"),
        (lambda d: d["inner"].pop("seconds"), "'inner.seconds'", "is missing"),
        (lambda d: d.update(counts={"a": "1"}), "\"counts['a']\"", "must be an integer"),
        (lambda d: d.update(nested={"s": {"url": None}}), "\"nested['s']['url']\"", "must be an integer, found null"),
        (lambda d: d.update(warnings="w"), "'warnings'", "must be a list"),
        (lambda d: d.update(warnings=[1]), "'warnings[0]'", "must be text, found the number 1"),
        (lambda d: d.update(fingerprint=[]), "'fingerprint'", "must be an object, found a list"),
        (lambda d: d.update(maybe={"reused": True}), "'maybe'", "must be an object (Inner) or null, found an object"),
        (lambda d: d.pop("label"), "'label'", "is missing"),
        (lambda d: d.update(extra=1), "'extra'", "unexpected field"),
    ],
)
def test_a_field_missing_unknown_or_of_the_wrong_type_is_refused_naming_the_file_and_field(
    tmp_path, change, field, expected
):
    path = rewrite(tmp_path, change)
    with pytest.raises(RecordError) as error:
        Sample.read(path)
    assert str(error.value).startswith(path + ": ")
    assert field in str(error.value) and expected in str(error.value)


def test_an_optional_field_left_out_takes_its_default(tmp_path):
    assert Sample.read(rewrite(tmp_path, lambda d: d.pop("note"))).note is None


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(version=1), "sample record of version 1, this pipeline reads version 2"),
        (lambda d: d.pop("version"), "sample record of no version (written before records had one)"),
        (lambda d: d.update(record="research"), "expected a sample record, found 'research'"),
        (lambda d: d.pop("record"), "expected a sample record, found no record name"),
    ],
)
def test_another_record_or_another_version_is_refused(tmp_path, change, expected):
    path = rewrite(tmp_path, change)
    with pytest.raises(RecordError, match=re.escape(expected)):
        Sample.read(path)


def test_a_record_from_before_records_had_names_is_refused_saying_so(tmp_path):
    path = rewrite(tmp_path, lambda d: [d.pop("record"), d.pop("version")])
    with pytest.raises(RecordError, match="no record name or version: written by a pipeline before its records had"):
        Sample.read(path)


def test_a_file_that_is_not_a_json_object_is_refused_naming_it(tmp_path):
    path = tmp_path / "sample.json"
    path.write_text('{"record": "sample", "rows": ')
    with pytest.raises(RecordError, match=f"{path}: not a JSON sample record"):
        Sample.read(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match=f"{path}: expected a JSON object \\(sample record\\), found a list"):
        Sample.read(str(path))


def test_a_refusal_never_repeats_the_text_it_found(tmp_path):
    secret = "http://listed.example/row.jpg"
    path = rewrite(tmp_path, lambda d: d.update(rows=secret))
    with pytest.raises(RecordError) as error:
        Sample.read(path)
    assert secret not in str(error.value) and "listed" not in str(error.value)


def test_a_record_that_would_not_read_back_is_never_written(tmp_path):
    path = tmp_path / "sample.json"
    bad = Sample(**{**GOOD.__dict__, "rows": "3"})
    with pytest.raises(RecordError, match="field 'rows' must be an integer"):
        bad.write(str(path))
    assert not path.exists()
