"""The stages of the job as plain functions over a `Settings`: what each Dagster asset calls.

Every stage reads its inputs from files, writes its outputs under the work location named by shard (`work.Work`),
and returns its typed record (`records`: rows, removals by kind/source/category, bytes, seconds), written beside
its outputs for the status and the release to read and reported by the asset as metadata. Nothing here imports Dagster, so every stage runs the same from the CLI, a notebook or a test.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time

import duckdb
import pyarrow as pa

from relaion_pipeline.canonical import urls
from relaion_pipeline.core import cache, collector, progress, row_keys, schemas, shard_lock, shards, storage
from relaion_pipeline.core.cache import fingerprint
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.lists.kinds import DOMAIN, IMAGE, PDQ, SIDECAR_COLUMNS, URL_MD5, sidecar_column
from relaion_pipeline.match import index, matching, near_matching
from relaion_pipeline.stages import input_counts, records, removal_keys, variants
from relaion_pipeline.stages.work import RESEARCH, RESEARCH_SAFE, StageError, Work

log = logging.getLogger(__name__)
SIDECAR_HASHES = SIDECAR_COLUMNS  # md5, sha1, sha256, pdq: the sidecar columns of the image kinds
COUNTS = ("rows_in", "without_url", "without_caption", "other_scheme", "duplicate_row_keys")  # shard_counts_sql


def build_blocklist(settings: Settings) -> records.BlocklistBuilt:
    """Parse, validate, merge and version the partner lists; write the merged list."""
    started = time.perf_counter()
    with storage.reaching(settings.blocklists):
        lists_fingerprint = blocklists.fingerprint(settings.blocklists)  # before reading: a change meanwhile reruns
    try:
        merged = blocklists.load(settings.blocklists, settings)
    except duckdb.OutOfMemoryException as error:  # DuckDB sorts the lists within the pipeline's limit
        raise out_of_memory(settings, "build_blocklist", error) from None
    previous = blocklists.read_pointer(Work(settings.work).blocklist_dir)
    shrunk = list_shrink(previous, merged.counts) if previous and previous["version"] != merged.version else ""
    if shrunk and not settings.allow_list_shrink:
        raise StageError(
            f"{settings.blocklists}: the lists hold fewer entries than blocklist {previous['version']}: {shrunk};"
            " a list copied in part, emptied or renamed would publish every row it listed: check the lists, or set"
            " allow_list_shrink (--allow-list-shrink, RELAION_ALLOW_LIST_SHRINK=1) to accept this version"
        )
    path = blocklists.write(merged, Work(settings.work).blocklist_dir, lists_fingerprint)
    return records.BlocklistBuilt(
        version=merged.version,
        entries=merged.entries,
        sources=list(merged.sources),
        entries_by_source_and_kind=merged.counts,
        entries_by_kind=merged.kinds,
        entries_by_category=merged.categories,
        path=path,
        shrink_accepted=shrunk,
        seconds=round(time.perf_counter() - started, 3),
    )


LIST_SHRINK = 0.10  # a source's kind losing more than this share of its entries at once is held as a mistake


def list_shrink(previous: dict, counts: dict) -> str:
    """How the new entry `counts` (per source and kind) fall short of the version before: sources gone, and
    kinds of a source that lost more than LIST_SHRINK of their entries (empty when none did). Partners delist
    a few entries at a time; a folder renamed or a file copied in part loses many at once."""
    lost = []
    for source, kinds in sorted((previous.get("counts") or {}).items()):
        if source not in counts:
            lost.append(f"source {source!r} ({sum(kinds.values()):,} entries) is gone")
            continue
        for kind, before in sorted(kinds.items()):
            now = counts[source].get(kind, 0)
            if before and now < before * (1 - LIST_SHRINK):
                lost.append(f"{source}'s {kind} entries {before:,} -> {now:,}")
    return ", ".join(lost)


def sidecar_of(settings: Settings, shard: shards.Shard) -> tuple[str | None, tuple[str, ...]]:
    path = storage.join(settings.sidecars, shard.file_name)
    if not settings.sidecars or not storage.exists(path):
        return None, ()
    schema = shards.open_parquet(path).schema_arrow
    schemas.unique_names(schema, path)
    if "key" not in schema.names:
        raise shards.ShardError(
            f"{path}: image-hash sidecar has no 'key' column (expected key plus {'/'.join(SIDECAR_HASHES)})"
        )
    columns = tuple(c for c in SIDECAR_HASHES if c in schema.names)
    if not columns:
        raise shards.ShardError(f"{path}: image-hash sidecar has none of the columns {', '.join(SIDECAR_HASHES)}")
    for column in columns:
        kind = schema.field(column).type
        if not schemas.is_text(kind):
            raise shards.ShardError(
                f"{path}: column {column!r} of the image-hash sidecar must hold hex strings, found {kind}"
            )
    if "pdq_quality" in schema.names and PDQ.sidecar_column in columns:
        kind = schema.field("pdq_quality").type
        if not pa.types.is_integer(kind):
            raise shards.ShardError(
                f"{path}: column 'pdq_quality' of the image-hash sidecar must hold integers 0-100, found {kind}"
            )
        columns += ("pdq_quality",)
    return path, columns


def image_gap(settings: Settings, name: str, kinds, sidecar_path: str | None, columns: tuple[str, ...]) -> str:
    """Why the shard cannot be matched against every image-hash entry of lists with these `kinds`: it has no
    sidecar, or its sidecar lacks the column of a listed kind (empty when it can, or when the operator set
    `skip_image_matching`). Without it the listed images would be published unseen: fail closed."""
    needed = sorted(k for k in set(kinds) if k in IMAGE)
    if not needed or settings.skip_image_matching:
        return ""
    how = (
        "; hash the images (relaion hash-images) or set skip_image_matching (--skip-image-matching,"
        " RELAION_SKIP_IMAGE_MATCHING=1) to match this run by URL only"
    )
    if sidecar_path is None:
        listed = f"shard {name!r}: the lists hold image hashes ({', '.join(needed)})"
        if not settings.sidecars:
            return f"{listed} and no sidecar location is set (sidecars, --sidecars, RELAION_SIDECARS){how}"
        expected = storage.join(settings.sidecars, name + shards.SUFFIX)
        if not storage.exists(settings.sidecars):
            return f"{listed} and the sidecar location {settings.sidecars} does not exist (looked for {expected}){how}"
        return f"{listed} and its image-hash sidecar {expected} does not exist{how}"
    missing = [k for k in needed if sidecar_column(k) not in columns]
    if missing:
        wanted = ", ".join(f"{sidecar_column(k)!r} for {k}" for k in missing)
        return f"shard {name!r}: its image-hash sidecar {sidecar_path} has no column {wanted} entries of the lists{how}"
    return ""


def _check_sidecar(path: str, name: str, roles: schemas.Roles, rows_in: int, rows: int, unmatched: int) -> list[str]:
    """A sidecar none of whose keys is a row key belongs to another shard (or uses another key): fail, since its
    image hashes would silently match nothing. Some unmatched keys are only reported (as a warning)."""
    if unmatched and unmatched == rows and rows_in:
        expected = (
            f"values of the shard's {roles.key!r} column"
            if roles.key is not None
            else f"'<shard>:<row number>' such as '{name}:0'"
        )
        raise shards.ShardError(
            f"{path}: none of the {rows:,} keys of this image-hash sidecar is a row key of shard {name!r},"
            f" expected {expected}"
        )
    if unmatched:
        return [f"{path}: {unmatched:,} of {rows:,} sidecar keys are not row keys of the shard"]
    return []


def locked(stage_name: str):
    """Run the stage `stage_name` as `stage(settings, name)` holding the shard's lock, so two runs of one
    partition never interleave. DuckDB running out of memory is reported with the settings that decide it.
    When the stage fails, the first line of its error is kept (`failure`), so that whoever asks why the shard
    has no output (the release, `relaion run`) gets the real cause."""

    def wrap(stage):
        @functools.wraps(stage)
        def run(settings: Settings, name: str, *args, **kwargs):
            collector.freeze("imports")
            failed = Work(settings.work).failure(stage_name, name)
            with shard_lock.holding(settings.work, name, waiting=log.info):
                storage.remove(failed)
                try:
                    return stage(settings, name, *args, **kwargs)
                except duckdb.OutOfMemoryException as error:
                    error = out_of_memory(settings, f"{stage.__name__} of shard {name!r}", error)
                    _record_failure(failed, error)
                    raise error from None
                except Exception as error:
                    _record_failure(failed, error)
                    raise

        return run

    return wrap


def _record_failure(path: str, error: Exception) -> None:
    """Keep the first line of a stage's error (the library's messages name files, rows and columns, never a
    row's URL or caption); a failure to keep it never hides the error itself."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0][:1000]
    try:
        storage.write_json_atomic({"error": line, "type": type(error).__name__}, path)
    except Exception:  # the stage's own error is what the caller must see
        log.warning("could not record the failure of a stage in %s", path)


def out_of_memory(settings: Settings, what: str, error: Exception) -> StageError:
    """The error for DuckDB reaching its memory limit: which limit, and the two settings that change it (its
    message is about sizes only, and its advice names SQL the user cannot run here)."""
    threads = settings.threads()
    detail = (str(error).strip().splitlines() or [""])[0]
    if "offload" in detail:  # the same exception when the spill space is full
        return StageError(
            f"{what}: DuckDB could not spill beyond its memory limit of {settings.memory_limit(threads)} ({detail});"
            " free space in the temporary folder (TMPDIR, where it spills into relaion-duckdb) or raise"
            " duckdb_memory_limit (RELAION_DUCKDB_MEMORY_LIMIT)"
        )
    return StageError(
        f"{what}: DuckDB ran out of memory at its limit of {settings.memory_limit(threads)} with {threads} threads"
        f" ({detail}); raise duckdb_memory_limit (RELAION_DUCKDB_MEMORY_LIMIT; by default 128MB a thread, at"
        " least 512MB, at most half a cgroup memory limit) or lower duckdb_threads (RELAION_DUCKDB_THREADS)"
        + (
            f"; with {settings.workers} shards at once (--workers) this was one shard's share"
            if settings.workers > 1
            else ""
        )
    )


def _start(settings: Settings, stage: str, name: str, *outputs: str) -> None:
    """Forget a stage's previous result for a shard before recomputing it, so a failed rerun never leaves
    an older output looking current."""
    for path in (Work(settings.work).stats(stage, name), *outputs):
        storage.remove(path)


def _count_by(table, *columns: str) -> dict[str, int]:
    """Distinct removed rows per value of `columns` (joined with '/')."""
    seen: dict[str, set[int]] = {}
    values = [table.column(c).to_pylist() for c in columns]
    for row_number, *key in zip(table.column("row_number").to_pylist(), *values, strict=True):
        seen.setdefault("/".join(str(k) for k in key), set()).add(row_number)
    return {k: len(v) for k, v in sorted(seen.items())}


def _shard_counts(settings: Settings, name: str, con: duckdb.DuckDBPyConnection, inputs: matching.MatchInputs) -> dict:
    """The shard's row counts (COUNTS), from one pass that also makes the input check's (kept for it; the
    columns its rules compare are numeric, `schemas.check_types`)."""
    more = input_counts.columns(inputs.roles)
    row = con.execute(matching.shard_counts_sql(inputs, more)).fetchall()[0]
    input_counts.remember(settings, name, con, dict(zip(more, row[len(COUNTS) :], strict=True)))
    return dict(zip(COUNTS, row[: len(COUNTS)], strict=True))


@locked("removals")
def compute_removals(settings: Settings, name: str) -> records.Removals:
    """Match one shard against the current merged blocklist and write its removals table.

    Rows that cannot be matched by URL (null, blank or unusable URL) are kept and counted; so are row keys
    that occur more than once. `warnings` says what a maintainer should look at, by file, column and row.
    """
    started = time.perf_counter()
    work = Work(settings.work)
    shard = shards.resolve(settings.shards, name)
    _start(settings, "removals", name, work.removals(name))
    roles = shards.roles(shard)
    keys = row_keys.Writer(shard.path, roles, shards.open_parquet(shard.path).schema_arrow)
    version, blocklist_path = blocklists.read_current(work.blocklist_dir)
    sidecar_path, sidecar_columns = sidecar_of(settings, shard)
    inputs = matching.MatchInputs(
        shard_name=name,
        shard_path=shard.path,
        roles=roles,
        blocklist_path=blocklist_path,
        sidecar_path=sidecar_path,
        sidecar_columns=sidecar_columns,
    )
    fingerprints = input_fingerprints(settings, name)
    input_fingerprint = fingerprints["input"]
    con = matching.connect(settings)
    try:
        kinds = matching.list_kinds(con, blocklist_path)
        if gap := image_gap(settings, name, kinds, sidecar_path, sidecar_columns):
            raise StageError(gap)
        md5, domains = URL_MD5.name in kinds, DOMAIN.name in kinds  # what the index needs to hold for this list
        meta = index.current(settings.work, name, input_fingerprint, md5=md5, domains=domains)
        reused = meta is not None
        if meta is None:
            counts = _shard_counts(settings, name, con, inputs)
            meta = index.build(con, inputs, settings.work, input_fingerprint, counts=counts, md5=md5, domains=domains)
        rows_in, null_urls, null_captions, other_scheme, duplicate_keys = (meta["counts"][c] for c in COUNTS)
        duplicate_sample = con.execute(matching.duplicate_key_sql(inputs)).fetchall()[0][0] if duplicate_keys else None
        sidecar_rows, unmatched_keys, low_quality, malformed_pdq, odd_quality = (
            cache.value(
                settings.work,
                name,
                cache.SIDECAR_COUNTS,
                {"input": input_fingerprint, "sidecar": fingerprints["sidecar_input"]},
                lambda: list(con.execute(matching.sidecar_counts_sql(inputs)).fetchall()[0]),
            )
            if sidecar_path
            else (0, 0, 0, 0, 0)
        )
        index_path = index.paths(settings.work, name)[0]
        candidates = index.list_candidates(con, settings.work, name, blocklist_path)
        near, near_how = None, None
        if matching.near_kinds(inputs, kinds):
            remember = (settings.work, {"input": input_fingerprint, "sidecar": fingerprints["sidecar_input"]})
            near, near_how = near_matching.shard_matches(con, inputs, remember)
        image = (
            index.list_image_hits(con, settings.work, name, inputs, kinds)
            if matching.image_kinds(inputs, kinds)
            else None
        )
        removals = matching.match_candidates(con, inputs, kinds, settings, candidates, near, image)
        removals = keys.column(matching.with_shard_keys(con, inputs, removals))
        unusable = index.unusable_rows(con, index_path)
    except duckdb.Error as error:
        raise shards.unreadable(error, shard.path, sidecar_path, blocklist_path) from None
    finally:
        con.close()
    warnings = _check_sidecar(sidecar_path, name, roles, rows_in, sidecar_rows, unmatched_keys) if sidecar_path else []
    if malformed_pdq:
        warnings.append(
            f"{sidecar_path}: {malformed_pdq:,} PDQ hashes of the shard's rows are not 64 hex digits in column"
            f" {PDQ.sidecar_column!r}; those rows cannot be near-matched (their exact image hashes still are)"
        )
    if odd_quality:
        warnings.append(
            f"{sidecar_path}: {odd_quality:,} values of column 'pdq_quality' are outside 0-100, expected PDQ's"
            " quality; their hashes are matched as if of unknown quality"
        )
    if unusable.size:
        first = ", ".join(str(n) for n in unusable[:5].tolist())
        warnings.append(
            f"{shard.path}: {unusable.size:,} of {rows_in:,} rows have a URL with no host in column"
            f" {roles.url!r} (rows {first}{', ...' if unusable.size > 5 else ''});"
            " they are kept and cannot match a URL list"
        )
    if duplicate_keys:
        warnings.append(
            f"{shard.path}: {duplicate_keys:,} of {rows_in:,} rows repeat the row key of another row in column"
            f" {roles.key!r} (e.g. {keys.one(duplicate_sample)!r}), expected unique keys; each row is matched on its own,"
            " by row number"
        )
    storage.write_parquet_atomic(removals, work.removals(name))
    stats = records.Removals(
        shard=name,
        family=roles.family,
        blocklist_version=version,
        input=input_fingerprint,
        index=records.IndexUse(reused=reused, entries=meta["entries"], bytes=meta["bytes"], seconds=meta["seconds"]),
        candidate_rows=int(candidates.size),
        rows_in=rows_in,
        rows_without_url=null_urls,
        rows_unusable_url=int(unusable.size),
        rows_without_caption=null_captions,
        rows_other_scheme=other_scheme,
        duplicate_row_keys=duplicate_keys,
        row_keys=keys.how,
        rows_removed=len(set(removals.column("row_number").to_pylist())),
        matches=removals.num_rows,
        removed_by_kind=_count_by(removals, "kind"),
        removed_by_source=_count_by(removals, "source"),
        removed_by_category=_count_by(removals, "category"),
        removed_by_kind_source_category=_count_by(removals, "kind", "source", "category"),
        removed_by_match=_count_by(removals, "match"),
        rules=removal_rules(settings),
        sidecar=sidecar_path is not None,
        sidecar_input=fingerprints["sidecar_input"],
        sidecar_rows=sidecar_rows,
        image_hash_rows=max(0, sidecar_rows - unmatched_keys) if sidecar_path else 0,
        image_matching="skipped" if settings.skip_image_matching else "required",
        sidecar_unmatched_keys=unmatched_keys,
        pdq_low_quality_rows=low_quality,
        pdq_malformed_rows=malformed_pdq,
        pdq_quality_out_of_range_rows=odd_quality,
        near_matching=records.NearSearch(**near_how) if near_how else None,
        warnings=warnings,
        seconds=round(time.perf_counter() - started, 3),
    )
    stats.write(work.stats("removals", name))
    return stats


def removal_rules(settings: Settings) -> records.RemovalRules:
    """What decides a shard's removals besides the lists: the keyword rule's settings, whether image hashes are
    required, and the forms a URL's host is matched in (`urls.HOST_FORMS`: shards matched before non-ASCII hosts
    had an IDNA form are matched again)."""
    keywords = matching.read_keywords(settings.keywords) if settings.keywords else ""
    return records.RemovalRules(
        host_forms=urls.HOST_FORMS,
        research_threshold=settings.research_threshold,
        keywords_sha256=hashlib.sha256(keywords.encode("utf-8")).hexdigest(),
        unsafe_tags=settings.unsafe_tags,
        skip_image_matching=settings.skip_image_matching,
    )


def input_fingerprints(settings: Settings, name: str) -> dict:
    """What a shard's removals are computed from on disk: the shard file and its image-hash sidecar (or None)."""
    shard = shards.resolve(settings.shards, name)
    sidecar = storage.join(settings.sidecars, shard.file_name) if settings.sidecars else None
    return {
        "input": fingerprint(shard.path),
        "sidecar_input": fingerprint(sidecar) if sidecar and storage.exists(sidecar) else None,
    }


def read_stats(settings: Settings, stage: str, name: str) -> records.Stage:
    """What `stage` recorded for shard `name` (`Work.record`: StageError with the cause when there is none)."""
    return Work(settings.work).record(stage, name)


def _safe_rule(settings: Settings, roles: schemas.Roles) -> dict:
    """What decides research-safe's rows besides research's (`variants.safe_keep_mask`)."""
    return {
        "punsafe": roles.punsafe,
        "nsfw": roles.nsfw,
        "safe_threshold": settings.safe_threshold,
        "missing_score": settings.missing_score,
        "unsafe_tags": list(settings.unsafe_tag_values),
    }


@locked(RESEARCH)
def write_research(settings: Settings, name: str) -> records.Research:
    """research: the shard minus every row in its removals table. research-safe is written in the same pass
    and staged (one read of the shard for both, their encoders on two threads); the research-safe stage
    publishes it if research and its rule are still what it was made from."""
    started = time.perf_counter()
    work = Work(settings.work)
    staged = work.staged_safe(name)
    _start(settings, RESEARCH, name, work.variant(RESEARCH, name), *staged)
    removal_stats = read_stats(settings, "removals", name)
    shard = shards.resolve(settings.shards, name)
    roles = shards.roles(shard)
    removals_sha256 = cache.sha256(settings.work, work.removals(name))[1]
    removed = work.removed_rows(name)
    with progress.named(f"{name}: research"):
        result, safe, unsafe = variants.write_research(
            shard.path, removed, work.variant(RESEARCH, name), safe=(roles, settings, staged[0])
        )
    cache.remember_sha256(settings.work, work.variant(RESEARCH, name), result.bytes, result.sha256)  # as written
    storage.write_parquet_atomic(pa.table({"row_number": pa.array(unsafe, pa.int64())}), staged[1])
    made = _staged_from(work, name, result.sha256, _safe_rule(settings, roles))
    cache.put(settings.work, name, cache.STAGED_SAFE, made, files=staged[:2], extra={"variant": safe.__dict__})
    stats = records.Research(
        shard=name,
        blocklist_version=removal_stats.blocklist_version,
        removals_sha256=removals_sha256,
        rows_in=result.rows_in,
        rows_removed=int(removed.size),
        rows_out=result.rows_out,
        bytes=result.bytes,
        sha256=result.sha256,
        seconds=round(time.perf_counter() - started, 3),
    )
    stats.write(work.stats(RESEARCH, name))
    return stats


def _staged_from(work: Work, name: str, research_sha256: str, rule: dict) -> dict:
    """What a staged research-safe is made from: research (its digest and its file) and the rule."""
    return {"research_sha256": research_sha256, "research": fingerprint(work.variant(RESEARCH, name)), "rule": rule}


def _take_staged_safe(work: Work, name: str, research_sha256: str, rule: dict) -> variants.VariantStats | None:
    """Publish the research-safe that the research stage staged, when the cache holds it for this research (its
    digest, and the file unchanged since) and this rule, its files unchanged: its variant and unsafe rows are
    moved into place. None when there is none to use; a staged copy is used once, and removed either way."""
    staged = work.staged_safe(name)
    try:
        if not storage.exists(work.variant(RESEARCH, name)):
            return None
        made = _staged_from(work, name, research_sha256, rule)
        kept = cache.lookup(work.root, name, cache.STAGED_SAFE, made, files=staged[:2])
        if kept is None:
            return None
        storage.move(staged[1], work.unsafe_rows(name))
        storage.move(staged[0], work.variant(RESEARCH_SAFE, name))
        return variants.VariantStats(**kept.extra["variant"])
    finally:
        for path in staged:
            storage.remove(path)


@locked(RESEARCH_SAFE)
def write_research_safe(settings: Settings, name: str) -> records.ResearchSafe:
    """research-safe: research minus rows whose safety score is above the safe threshold: the copy research's
    pass staged when research and the rule are still what it was made from, else written from the shard
    and its removals (the same rows and bytes)."""
    started = time.perf_counter()
    work = Work(settings.work)
    _start(settings, RESEARCH_SAFE, name, work.variant(RESEARCH_SAFE, name), work.unsafe_rows(name))
    research_stats = read_stats(settings, RESEARCH, name)
    shard = shards.resolve(settings.shards, name)
    roles = shards.roles(shard)
    result = _take_staged_safe(work, name, research_stats.sha256, _safe_rule(settings, roles))
    if result is None:  # from the shard and its removals, as research's pass writes it: the same ones
        if cache.sha256(settings.work, work.removals(name))[1] != research_stats.removals_sha256:
            raise StageError(
                f"shard {name!r}: its removals changed since research was written: materialize 'research' again"
            )
        if fingerprint(shard.path) != read_stats(settings, "removals", name).input:
            raise StageError(f"shard {name!r}: its input changed since it was matched: materialize 'removals' again")
        with progress.named(f"{name}: research-safe"):
            result, unsafe = variants.write_research_safe(
                shard.path, work.removed_rows(name), roles, settings, work.variant(RESEARCH_SAFE, name)
            )
        storage.write_parquet_atomic(pa.table({"row_number": pa.array(unsafe, pa.int64())}), work.unsafe_rows(name))
    cache.remember_sha256(settings.work, work.variant(RESEARCH_SAFE, name), result.bytes, result.sha256)
    removal_keys.keys(settings, name)  # its part of a release's removal list, made here rather than at release
    stats = records.ResearchSafe(
        shard=name,
        blocklist_version=research_stats.blocklist_version,
        research_sha256=research_stats.sha256,
        score=roles.punsafe or roles.nsfw or "none",
        safe_threshold=settings.safe_threshold,
        missing_score=settings.missing_score,
        rows_in=result.rows_in,
        rows_dropped_unsafe=result.rows_in - result.rows_out,
        rows_out=result.rows_out,
        bytes=result.bytes,
        sha256=result.sha256,
        seconds=round(time.perf_counter() - started, 3),
    )
    stats.write(work.stats(RESEARCH_SAFE, name))
    return stats
