"""The blocking checks that guard publication of a shard's variants, declared in one readable place.

Each suite is a list of (name, why, frame SQL, expectations). DuckDB reduces the shard to the frame (offending
rows or one row of counts), Great Expectations validates it. Every outcome is written as JSON under
`<work>/validation/<suite>/<shard>.json` together with the sha256 of the file it validated, so the release
publishes a shard only when its checks passed on exactly the bytes being published.
"""

from __future__ import annotations

import html
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from relaion_pipeline.core import cache, db, row_keys, shards, storage
from relaion_pipeline.core.records import Record
from relaion_pipeline.core.schemas import quote, sql_string
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists, pdq
from relaion_pipeline.lists.kinds import ALL, DOMAIN, NAMES, PDQ, sql_list
from relaion_pipeline.match import matching
from relaion_pipeline.stages import input_counts, pipeline, variants
from relaion_pipeline.stages.pipeline import read_stats
from relaion_pipeline.stages.work import RESEARCH, RESEARCH_SAFE, Work
from relaion_pipeline.validation import leaks, quality

INPUT_WELL_FORMED = "input_shard_well_formed"
BLOCKLIST_WELL_FORMED = "blocklist_well_formed"
RELEASE_MATCHES_FILES = "release_matches_its_files"
RESEARCH_NO_MATCH = "research_has_no_blocklist_match"
RESEARCH_COUNTS = "research_rows_add_up"
SAFE_THRESHOLD = "research_safe_below_threshold"
SAFE_SUBSET = "research_safe_rows_add_up"
DROP_IN = "a published shard is a drop-in replacement: same columns, types and metadata as its input"
BLOCKING = {RESEARCH: (RESEARCH_NO_MATCH, RESEARCH_COUNTS), RESEARCH_SAFE: (SAFE_THRESHOLD, SAFE_SUBSET)}

WHY = {
    INPUT_WELL_FORMED: "the shard's values are in range and its rows identifiable, or its outputs cannot be trusted",
    BLOCKLIST_WELL_FORMED: "every entry is well formed for its kind and names its source, or matching misses rows",
    RELEASE_MATCHES_FILES: "what the manifest promises (rows, checksums, passed checks) is what was published",
    RESEARCH_NO_MATCH: "research must hold no row that any partner list or the keyword rule removes",
    RESEARCH_COUNTS: "every input row is either removed or published, none lost or duplicated",
    SAFE_THRESHOLD: "research-safe must hold no row whose safety score is above the safe threshold",
    SAFE_SUBSET: "research-safe is research minus the unsafe rows, nothing else",
}


@dataclass(frozen=True)
class _Outcome(Record):
    """What every check's record keeps of its outcome (its page is written beside it)."""

    suite: str
    partition: str
    success: bool
    evaluated: int
    failures: list[quality.Failure]
    statistics: dict
    why: str

    @classmethod
    def of(cls, outcome: quality.Outcome, **more):
        """The record of `outcome`, with the fields of `cls` beyond the outcome's (`more`)."""
        return cls(
            suite=outcome.suite,
            partition=outcome.partition,
            success=outcome.success,
            evaluated=outcome.evaluated,
            failures=list(outcome.failures),
            statistics=outcome.statistics,
            why=WHY[outcome.suite],
            **more,
        )


@dataclass(frozen=True)
class CheckRecord(_Outcome):
    """A check's outcome on one file of a partition and exactly which bytes it validated: what `status` reads
    to decide whether a shard's files passed their checks (`<work>/validation/<suite>/<partition>.json`)."""

    NAME: ClassVar[str] = "check"
    VERSION: ClassVar[int] = 1

    validated_sha256: str
    validated_bytes: int
    validated_fingerprint: dict


@dataclass(frozen=True)
class ReleaseCheckRecord(_Outcome):
    """The release check's outcome: the problems re-verifying the release found, and shards without checks."""

    NAME: ClassVar[str] = "release-check"
    VERSION: ClassVar[int] = 1

    problems: list[str]
    unchecked: list[str]


def _validated(work: str, path: str) -> dict:
    """Which bytes a check validated: sha256, size and fingerprint of the file (from the digest cache under the
    work location: read once while the file is unchanged, `cache.sha256`)."""
    found = cache.fingerprint(path)
    size, digest = cache.sha256(work, path)
    return {"validated_sha256": digest, "validated_bytes": size, "validated_fingerprint": found}


def _record(settings: Settings, outcome: quality.Outcome, validated: str | dict) -> quality.Outcome:
    """Write the outcome of a suite on a file (its path, or `_validated` of it) as the partition's record."""
    described = _validated(settings.work, validated) if isinstance(validated, str) else validated
    _write(settings, outcome, CheckRecord.of(outcome, **described))
    return outcome


def _write(settings: Settings, outcome: quality.Outcome, record: Record) -> None:
    """The result as its record and its Data Docs page beside it (`write_index` lists them all)."""
    path = Work(settings.work).validation(outcome.suite, outcome.partition)
    record.write(path)
    storage.write_text_atomic(outcome.html, path[: -len(".json")] + ".html")


def write_index(settings: Settings) -> str:
    """`<work>/validation/index.html`: every suite and partition with its status, linking to its page."""
    root = storage.join(settings.work, "validation")
    fs, inner = storage.filesystem(root)
    rows = []
    for path in sorted(fs.find(inner)):
        if not path.endswith(".json"):
            continue
        relative = path[len(inner.rstrip("/")) + 1 : -len(".json")]
        record = json.loads(fs.cat_file(path))
        status = "passed" if record.get("success") else "FAILED"
        rows.append(
            f"<tr><td>{html.escape(record.get('suite', ''))}</td><td>{html.escape(str(record.get('partition')))}</td>"
            f'<td class="{status}">{status}</td><td><a href="{html.escape(relative)}.html">result</a></td></tr>'
        )
    page = (
        "<!doctype html><meta charset=utf-8><title>relaion-pipeline validation results</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 12px}.FAILED{color:#b00;font-weight:bold}</style>"
        "<h1>Validation results (Great Expectations)</h1><table><tr><th>suite</th><th>partition</th>"
        "<th>status</th><th></th></tr>" + "".join(rows) + "</table>"
    )
    index = storage.join(root, "index.html")
    storage.write_text_atomic(page, index)
    return index


@pipeline.locked("check-input")
def check_input(settings: Settings, name: str) -> list[quality.Outcome]:
    """The input shard: URLs present and plausible, scores in range, sizes positive, row keys unique.

    DuckDB counts the rows breaking each rule in one pass; GX asserts every count is zero. Failures carry a
    few row keys of offending rows (never their values). The counts hold while the shard file does: the
    removals stage's pass over the shard makes them, or this check, and a rerun for a new list version
    does not count them again, nor digest the file again."""
    gx = quality.expectations()
    shard = shards.resolve(settings.shards, name)
    rules = input_counts.rules(shards.roles(shard))

    def count() -> dict:
        con = matching.connect(settings)
        try:
            return input_counts.count(con, shard, name)
        finally:
            con.close()

    key = input_counts.key(shard, name)
    remembered = cache.value(settings.work, name, cache.INPUT_COUNTS, key, count)
    frame, samples = pd.DataFrame([remembered["counts"]]), remembered["samples"]
    why = {column: text for column, _, text in rules} | {"duplicate_row_keys": "a row key names one row"}
    expectations = [
        gx.ExpectColumnMaxToBeBetween(column=column, min_value=0, max_value=0, notes=why[column])
        for column in frame.columns
    ]
    with ThreadPoolExecutor(max_workers=1) as pool:  # the shard's digest, once per input file like its counts
        digest_key = {"input": key["input"]}
        validated = pool.submit(
            cache.value,
            settings.work,
            name,
            cache.INPUT_DIGEST,
            digest_key,
            lambda: _validated(settings.work, shard.path),
        )
        outcome = quality.validate(INPUT_WELL_FORMED, name, frame, expectations)
    for failure in outcome.failures:
        failure.sample_row_keys = [str(k) for k in samples.get(failure.column, [])]
    return [_record(settings, outcome, validated.result())]


def check_blocklist(settings: Settings) -> list[quality.Outcome]:
    """Re-validate the merged list in SQL, independently of the parser: hex of the right length per kind, plain
    host names for domains, a source and a category on every entry, a match distance on every pdq entry."""
    gx = quality.expectations()
    work = Work(settings.work)
    version, path = blocklists.read_current(work.blocklist_dir)
    lengths = " ".join(f"WHEN {k.sql} THEN {k.hex_digits}" for k in ALL if k.hex_digits is not None)
    has_distance = "distance" in shards.open_parquet(path).schema_arrow.names
    distance = "" if has_distance else ", NULL::SMALLINT AS distance"  # a list file from before pdq entries
    con = matching.connect(settings)
    try:
        frame = con.sql(
            f"""SELECT
                count(*) FILTER (WHERE kind <> {DOMAIN.sql} AND NOT coalesce(regexp_full_match(value, '[0-9a-f]+')
                                 AND length(value) = CASE kind {lengths} ELSE -1 END, false)) AS malformed_hashes,
                count(*) FILTER (WHERE kind = {DOMAIN.sql} AND NOT coalesce(regexp_full_match(value,
                                 '[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)+'), false))
                    AS malformed_domains,
                count(*) FILTER (WHERE coalesce(kind NOT IN {sql_list(NAMES)}, true)) AS unknown_kinds,
                count(*) FILTER (WHERE coalesce(trim(source), '') = '') AS entries_without_source,
                count(*) FILTER (WHERE coalesce(trim(category), '') = '') AS entries_without_category,
                count(*) FILTER (WHERE kind = {PDQ.sql} AND NOT coalesce(distance BETWEEN 0 AND {pdq.MAX_DISTANCE}, false))
                    AS pdq_without_a_valid_distance
            FROM (SELECT *{distance} FROM read_parquet({storage.duckdb_path(path)}))"""
        ).df()
    finally:
        con.close()
    expectations = [
        gx.ExpectColumnMaxToBeBetween(column=c, min_value=0, max_value=0, notes=WHY[BLOCKLIST_WELL_FORMED])
        for c in frame.columns
    ]
    return [_record(settings, quality.validate(BLOCKLIST_WELL_FORMED, version, frame, expectations), path)]


def check_release(settings: Settings, problems: list[str], unchecked: list[str], version: str) -> quality.Outcome:
    """The release: no problem found by re-verifying its files, and no published shard without passed checks."""
    gx = quality.expectations()
    frame = pd.DataFrame({"verify_problems": [len(problems)], "shards_without_passed_checks": [len(unchecked)]})
    expectations = [
        gx.ExpectColumnMaxToBeBetween(column=c, min_value=0, max_value=0, notes=WHY[RELEASE_MATCHES_FILES])
        for c in frame.columns
    ]
    outcome = quality.validate(RELEASE_MATCHES_FILES, version, frame, expectations)
    _write(settings, outcome, ReleaseCheckRecord.of(outcome, problems=problems, unchecked=unchecked))
    return outcome


def _rows_not_in(con, subset: str, superset: str, roles, dropped: np.ndarray) -> int:
    """Rows of the parquet file `subset` that the file `superset` does not hold, by row key (or, for shards
    without one, by URL and caption). A variant is its source minus the rows at `dropped` (sorted positions)
    in order: when the files stream side by side as exactly that, none; only otherwise does a join of every
    row key count them."""
    columns = [roles.key] if roles.key is not None else [c for c in (roles.url, roles.caption) if c]
    if variants.is_filtered_copy(subset, superset, columns, dropped):
        return 0
    on = " AND ".join(f"s.{quote(c)} IS NOT DISTINCT FROM t.{quote(c)}" for c in columns)
    query = (
        f"SELECT count(*) FROM read_parquet({storage.duckdb_path(subset)}) s "
        f"ANTI JOIN read_parquet({storage.duckdb_path(superset)}) t ON {on}"
    )
    return con.execute(query).fetchall()[0][0]


@pipeline.locked("check-research")
def check_research(settings: Settings, name: str) -> list[quality.Outcome]:
    """No research row matches the list (found without the matching query), and rows in = removed + out."""
    gx = quality.expectations()
    work = Work(settings.work)
    research_path = work.variant(RESEARCH, name)
    stats = read_stats(settings, RESEARCH, name)
    _, blocklist_path = blocklists.read_current(work.blocklist_dir)
    shard = shards.resolve(settings.shards, name)
    roles = shards.roles(shard)
    con = matching.connect(settings)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # research's digest and order, read while leaks are sought
            validated = pool.submit(_validated, settings.work, research_path)
            removed = work.removed_rows(name)
            not_in_input = db.on_cursor(con, pool, _rows_not_in, research_path, shard.path, roles, removed)
            found, audit = leaks.find(settings, con, name, shard, blocklist_path, research_path)
    finally:
        con.close()
    validated, not_in_input = validated.result(), not_in_input.result()
    frame = pd.DataFrame(found, columns=["row_key", "kind", "source", "category"])
    frame["row_key"] = row_keys.Writer(shard.path, roles, shards.open_parquet(shard.path).schema_arrow).many(
        frame["row_key"]
    )  # the keys of listed rows: shown in the failure, kept in the validation files
    no_match = quality.validate(
        RESEARCH_NO_MATCH,
        name,
        frame,
        [gx.ExpectTableRowCountToEqual(value=0, notes=WHY[RESEARCH_NO_MATCH])],
    )
    no_match.statistics |= audit
    for failure in no_match.failures:
        failure.sample_row_keys = sorted({str(k) for k in frame["row_key"]})[: quality.SAMPLE_KEYS]
    rows_out = storage.num_rows(research_path)
    same_schema = shards.open_parquet(research_path).schema_arrow.equals(
        shards.open_parquet(shard.path).schema_arrow, check_metadata=True
    )
    counts = pd.DataFrame(
        {
            "rows_in": [storage.num_rows(shard.path)],
            "rows_removed": [stats.rows_removed],
            "rows_out": [rows_out],
            "rows_not_in_input": [not_in_input],
            "schema_differs_from_input": [0 if same_schema else 1],
        }
    )
    counts["rows_in_minus_removed"] = counts["rows_in"] - counts["rows_removed"]
    rows_add_up = quality.validate(
        RESEARCH_COUNTS,
        name,
        counts,
        [
            gx.ExpectColumnPairValuesToBeEqual(
                column_A="rows_out", column_B="rows_in_minus_removed", notes=WHY[RESEARCH_COUNTS]
            ),
            gx.ExpectColumnMaxToBeBetween(
                column="rows_not_in_input", min_value=0, max_value=0, notes="every published row comes from the input"
            ),
            gx.ExpectColumnMaxToBeBetween(column="schema_differs_from_input", min_value=0, max_value=0, notes=DROP_IN),
        ],
    )
    return [_record(settings, no_match, validated), _record(settings, rows_add_up, validated)]


@pipeline.locked("check-research-safe")
def check_research_safe(settings: Settings, name: str) -> list[quality.Outcome]:
    """No score above the safe threshold in research-safe; its rows are research minus the unsafe ones."""
    gx = quality.expectations()
    work = Work(settings.work)
    safe_path = work.variant(RESEARCH_SAFE, name)
    research_path = work.variant(RESEARCH, name)
    stats = read_stats(settings, RESEARCH_SAFE, name)
    shard = shards.resolve(settings.shards, name)
    roles = shards.roles(shard)
    key = roles.key_sql(name)
    removed, unsafe = work.removed_rows(name), np.zeros(0, np.int64)
    if storage.exists(work.unsafe_rows(name)):  # else no copy is recognized: the join counts
        unsafe = storage.read_table(work.unsafe_rows(name), columns=["row_number"]).column("row_number").to_numpy()
    dropped = unsafe - np.searchsorted(removed, unsafe)  # research positions of the unsafe shard rows
    con = matching.connect(settings)
    pool = ThreadPoolExecutor(max_workers=2)  # its digest and order, read while its scores are validated
    try:
        validated = pool.submit(_validated, settings.work, safe_path)
        not_in_research = db.on_cursor(con, pool, _rows_not_in, safe_path, research_path, roles, dropped)
        if roles.punsafe is not None:
            column = quote(roles.punsafe)
            unsafe = matching.score_above(column, settings.safe_threshold) + (
                f" OR {column} IS NULL" if settings.missing_score == "drop" else ""
            )
            frame = con.sql(
                f"SELECT {key} AS row_key, CAST({column} AS DOUBLE) AS score "
                f"FROM read_parquet({storage.duckdb_path(safe_path)}, file_row_number = true) WHERE {unsafe}"
            ).df()
            rules = [
                gx.ExpectColumnValuesToBeBetween(
                    column="score", min_value=0.0, max_value=settings.safe_threshold, notes=WHY[SAFE_THRESHOLD]
                ),
                gx.ExpectColumnValuesToNotBeNull(column="score", notes="a row without a score is not known safe"),
            ]
        elif roles.nsfw is not None:
            tags = ", ".join(sql_string(t) for t in settings.unsafe_tag_values) or "NULL"
            unsafe = f"{quote(roles.nsfw)} IN ({tags})" + (
                f" OR {quote(roles.nsfw)} IS NULL" if settings.missing_score == "drop" else ""
            )
            frame = con.sql(
                f"SELECT {key} AS row_key, {quote(roles.nsfw)} AS tag "
                f"FROM read_parquet({storage.duckdb_path(safe_path)}, file_row_number = true) WHERE {unsafe}"
            ).df()
            rules = [
                gx.ExpectColumnValuesToNotBeInSet(
                    column="tag", value_set=settings.unsafe_tag_values, notes=WHY[SAFE_THRESHOLD]
                ),
                gx.ExpectColumnValuesToNotBeNull(column="tag", notes="a row without a tag is not known safe"),
            ]
        else:
            unsafe = "true" if settings.missing_score == "drop" else "false"  # every row's score is missing
            frame = pd.DataFrame({"row_key": pd.Series([], dtype="str")})
            rules = [gx.ExpectTableRowCountToEqual(value=0, notes="shard has no safety score; nothing to exceed")]
        if len(frame):  # the keys as the pipeline writes them: a text key column may hold the URL
            frame["row_key"] = row_keys.Writer(shard.path, roles, shards.open_parquet(shard.path).schema_arrow).many(
                frame["row_key"]
            )
        unsafe_in_research = con.execute(
            f"SELECT count(*) FILTER (WHERE {unsafe}) FROM read_parquet({storage.duckdb_path(research_path)})"
        ).fetchall()[0][0]  # what research-safe leaves out, counted here rather than taken from its stage
        below = quality.validate(SAFE_THRESHOLD, name, frame, rules)
    finally:
        pool.shutdown()
        con.close()
    validated, not_in_research = validated.result(), not_in_research.result()
    same_schema = shards.open_parquet(safe_path).schema_arrow.equals(
        shards.open_parquet(shard.path).schema_arrow, check_metadata=True
    )
    counts = pd.DataFrame(
        {
            "research_rows": [storage.num_rows(research_path)],
            "safe_rows": [storage.num_rows(safe_path)],
            "dropped_unsafe": [stats.rows_dropped_unsafe],
            "unsafe_in_research": [unsafe_in_research],
            "rows_not_in_research": [not_in_research],
            "schema_differs_from_input": [0 if same_schema else 1],
        }
    )
    counts["research_minus_dropped"] = counts["research_rows"] - counts["dropped_unsafe"]
    left_out = counts["research_rows"] - counts["safe_rows"] - counts["unsafe_in_research"]
    counts["safe_rows_left_out"] = left_out.clip(lower=0)  # unsafe rows kept are the threshold check's to find
    adds_up = quality.validate(
        SAFE_SUBSET,
        name,
        counts,
        [
            gx.ExpectColumnPairValuesToBeEqual(
                column_A="safe_rows", column_B="research_minus_dropped", notes=WHY[SAFE_SUBSET]
            ),
            gx.ExpectColumnMaxToBeBetween(
                column="safe_rows_left_out",
                min_value=0,
                max_value=0,
                notes="research-safe leaves out only the rows of research above the safe threshold",
            ),
            gx.ExpectColumnMaxToBeBetween(
                column="rows_not_in_research", min_value=0, max_value=0, notes="research-safe is a subset of research"
            ),
            gx.ExpectColumnMaxToBeBetween(
                column="schema_differs_from_input",
                min_value=0,
                max_value=0,
                notes="a published shard is a drop-in replacement: same columns, types and metadata as its input",
            ),
        ],
    )
    return [_record(settings, below, validated), _record(settings, adds_up, validated)]
