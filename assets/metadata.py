"""Turning a stage's statistics into Dagster metadata a maintainer can read at a glance."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import dagster as dg

from relaion_pipeline.core import progress
from relaion_pipeline.core.records import Record


class _Forward(logging.Handler):
    def __init__(self, log):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.info(record.getMessage())


@contextmanager
def progress_to(log, seconds: float):
    """While an asset runs: the progress lines of its long work (`core.progress`), one every `seconds` at
    most (the setting `progress_seconds`), in its run's log, which the UI shows as it goes."""
    with progress.to(_Forward(log), seconds):
        yield


def markdown_table(counts: dict[str, int], header: tuple[str, str]) -> dg.MetadataValue:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {key} | {value:,} |" for key, value in counts.items()] or ["| (none) | 0 |"]
    return dg.MetadataValue.md("\n".join(lines))


def from_stats(record: Record | dict) -> dict:
    """A stage's record (or the release's summary) as metadata: numbers as numbers, objects as JSON, plus a
    markdown table of removals."""
    stats = record.as_dict() if isinstance(record, Record) else record
    out: dict = {}
    for key, value in stats.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value)
        elif isinstance(value, dict | list):
            out[key] = dg.MetadataValue.json(value)
        elif value is not None:
            out[key] = dg.MetadataValue.text(str(value))
    if "removed_by_kind_source_category" in stats:
        out["removals"] = markdown_table(stats["removed_by_kind_source_category"], ("kind/source/category", "rows"))
    return out


def check_result(outcome, asset_key) -> dg.AssetCheckResult:
    """A Great Expectations outcome as a Dagster check result (row keys only, never URLs)."""
    failures = [
        {
            "expectation": f.expectation,
            "column": f.column,
            "unexpected_count": f.unexpected_count,
            "observed": f.observed,
            "sample_row_keys": f.sample_row_keys,
            **({"exception": f.exception} if f.exception else {}),
        }
        for f in outcome.failures
    ]
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=outcome.suite,
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "summary": dg.MetadataValue.text(outcome.summary()),
            "expectations": dg.MetadataValue.int(outcome.evaluated),
            "failures": dg.MetadataValue.json(failures),
        },
    )
