"""Data-quality suites run with Great Expectations 1.x, on small frames that DuckDB pushes the work down to.

A shard is never loaded into pandas: DuckDB computes, per check, the frame GX validates (the rows that break a
rule, or one row of counts), so memory stays bounded on 18M-row shards while GX keeps the expectation, its
reason (`notes`) and the result format maintainers know. Results are written per partition as JSON.

GX is imported inside the functions: importing it takes seconds, which the Dagster code location must not pay.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from functools import cache

import pandas as pd

from relaion_pipeline.core import collector

SAMPLE_KEYS = 5


@dataclass
class Failure:
    """One failed expectation: its column (the first of a pair compared) and what was observed (for a pair, the
    two values that differ, by column)."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    observed: object
    sample_row_keys: list[str]
    exception: str | None = None


@dataclass
class Outcome:
    """The result of one suite on one partition, as shown in Dagster metadata and written as JSON."""

    suite: str
    partition: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    statistics: dict = field(default_factory=dict)
    html: str = field(default="", repr=False)  # the result rendered as a GX Data Docs page

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("html")
        return out

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: all {self.evaluated} expectations passed"
        parts = [
            f"{f.expectation}({f.column or ''}) unexpected={f.unexpected_count} observed={f.observed}"
            + (f" error={f.exception}" if f.exception else "")
            for f in self.failures
        ]
        return f"{self.suite}: {len(self.failures)} of {self.evaluated} failed: " + "; ".join(parts)


@cache
def _batch_definition():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # older configs: progress bars only cost some terminal noise
        pass
    source = context.data_sources.add_pandas("relaion")
    return source.add_dataframe_asset(name="frame").add_batch_definition_whole_dataframe("whole")


def expectations():
    """The GX expectations module, imported on first use (its objects then exempt from cyclic collection)."""
    import great_expectations as gx

    collector.freeze("great_expectations")
    return gx.expectations


def validate(suite: str, partition: str, frame: pd.DataFrame, expectation_list: list) -> Outcome:
    """Run `expectation_list` on `frame`; failures carry unexpected counts and a few row keys, never URLs."""
    import great_expectations as gx

    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    gx_suite = gx.ExpectationSuite(name=suite, expectations=expectation_list)
    result_format: dict = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_KEYS}
    if "row_key" in frame.columns:
        result_format["unexpected_index_column_names"] = ["row_key"]
        result_format["result_format"] = "COMPLETE"
    result = batch.validate(gx_suite, result_format=result_format)
    failures = []
    for item in result.results:
        error = _exception(item.exception_info)
        raised = error.get("raised_exception")
        if item.success and not raised:
            continue
        details = item.result or {}
        keys = [str(entry.get("row_key")) for entry in (details.get("unexpected_index_list") or [])[:SAMPLE_KEYS]]
        if not keys and "row_key" in frame.columns:  # table-level expectation: every row of the frame offends
            keys = [str(k) for k in frame["row_key"].drop_duplicates().head(SAMPLE_KEYS)]
        kwargs = item.expectation_config.kwargs
        observed = _plain(details.get("observed_value"))
        pair = [kwargs[c] for c in ("column_A", "column_B") if c in kwargs]
        if pair and observed is None and details.get("partial_unexpected_list"):  # the two values that differ
            observed = {c: _plain(v) for c, v in zip(pair, details["partial_unexpected_list"][0], strict=True)}
        failures.append(
            Failure(
                expectation=item.expectation_config.type,
                column=kwargs.get("column") or (pair[0] if pair else None),
                unexpected_count=details.get("unexpected_count"),
                observed=observed,
                sample_row_keys=keys,
                exception=(error.get("exception_message") if raised else None),
            )
        )
    return Outcome(
        suite=suite,
        partition=partition,
        success=not failures,
        evaluated=len(result.results),
        failures=failures,
        statistics={k: _plain(v) for k, v in (result.statistics or {}).items()},
        html=render(result),
    )


def _exception(info) -> dict:
    """GX's exception info of one expectation: flat (`raised_exception`, `exception_message`) or, when a metric
    it needs failed (a column the frame lacks), one such dict per metric: the first that raised."""
    if not isinstance(info, dict):
        return {}
    if "raised_exception" in info:
        return info
    raised = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return raised[0] if raised else {}


def render(result) -> str:
    """A validation result as the static HTML page GX Data Docs shows for it."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer

    return _page_view().render(ValidationResultsPageRenderer().render(result))


@functools.cache
def _page_view():
    """One GX page view per process: its Jinja environment keeps the parsed templates (~0.1 s a page)."""
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView()


def _plain(value):
    """JSON-friendly version of numpy scalars GX returns."""
    if hasattr(value, "item"):
        return value.item()
    return value
