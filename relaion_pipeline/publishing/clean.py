"""Cleaning an old copy of the dataset with a published release, for people who downloaded it before.

Two ways, as LAION offered them: by the release's removal list (drop every row whose LAION `hash` it lists),
or by difference (keep only rows the release's variant still holds, shard by shard). Rows are identified by
the LAION `hash` (mmh3 of url + text) taken from the shard or computed, so any supported schema works. Each
shard streams batch by batch and is written with its original schema under the same relative path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from relaion_pipeline.core import interrupts, row_hashes, schemas, shards, storage
from relaion_pipeline.publishing import manifest as manifests
from relaion_pipeline.publishing import report, verification
from relaion_pipeline.stages import variants


class CleanError(ValueError):
    """A clean that cannot be done as asked; the message says why and what to do instead."""


class UnverifiedRelease(CleanError):
    """The release's manifest or a file of it that the clean reads is not what the release published."""


@dataclass
class ShardCleaned:
    shard: str
    rows_in: int
    rows_removed: int
    rows_out: int
    seconds: float


def _hashes(batch: pa.RecordBatch, roles: schemas.Roles):
    """The batch's LAION hashes, after stopping here if the command was interrupted (`interrupts.deferred`)."""
    interrupts.raise_if_signalled()
    return row_hashes.of_batch(batch, roles)


def _listed(hashes: np.ndarray, removal_list: str) -> np.ndarray:
    """Which of `hashes` the removal list names, reading the list a row group at a time: memory grows with
    the shard being cleaned, not with the list (which may name hundreds of millions of rows)."""
    listed = np.zeros(hashes.size, dtype=bool)
    wanted = np.unique(hashes)
    for batch in shards.open_parquet(removal_list).iter_batches(batch_size=1 << 20, columns=["hash"]):
        interrupts.raise_if_signalled()
        found = np.intersect1d(wanted, batch.column(0).to_numpy(), assume_unique=False)
        if found.size:
            listed |= np.isin(hashes, found)
    return listed


def _check_locations(release_location: str, input_location: str, output_location: str) -> None:
    """Refuse an output that would overwrite the input, or write into a release."""
    if storage.inside(output_location, input_location):
        raise CleanError(
            f"--output {output_location} is --input {input_location} or inside it; expected a separate folder"
            " (the input is never modified)"
        )
    if storage.inside(output_location, release_location):
        raise CleanError(
            f"--output {output_location} is inside --release {release_location}; expected a separate folder"
        )


def _checked_release(release_location: str) -> tuple[str, dict]:
    """The release folder and its manifest, refused unless the manifest is what its version says."""
    published = verification.resolve(release_location)
    manifest = verification.read_manifest(published)
    problems = manifests.problems(manifest)
    if problems:
        raise UnverifiedRelease(f"{published}: not used to clean: {problems[0]} (check it with relaion verify)")
    return published, manifest


def _release_files(manifest: dict, found: list[shards.Shard], by: str, variant: str) -> list[str]:
    """The files of the release this clean reads, after making sure it has each one it needs."""
    if by == "removal-list":
        if not manifest.get("removal_list", {}).get("published"):
            why = manifest.get("removal_list", {}).get("reason", "this release has none")
            raise CleanError(f"release {manifest['version']}: no removal list ({why}); use --by difference")
        return [report.REMOVAL_LIST]
    missing = [shard.name for shard in found if shard.name not in manifest["shards"]]
    if missing:
        why = {n: manifest.get("held_back", {}).get(n) or manifest.get("left", {}).get(n) for n in missing}
        named = "; ".join(f"{n} ({w})" if w else n for n, w in why.items())
        raise CleanError(
            f"release {manifest['version']} has no shard to compare {len(missing)} input shard(s) with: {named};"
            " remove them from --input or clean with --by removal-list"
        )
    return [manifest["shards"][shard.name]["files"][variant]["path"] for shard in found]


def clean(release_location: str, input_location: str, output_location: str, by: str = "removal-list",
          variant: str = "research-safe", progress=print) -> dict:  # fmt: skip
    """Clean every shard under `input_location` into `output_location`; return the report (also written, last).

    Every release file it reads is first checked against the manifest, and the manifest against its version.
    If it fails midway, the shards it wrote are removed and no report exists: nothing looks complete."""
    if by not in ("removal-list", "difference"):
        raise CleanError(f"--by must be 'removal-list' or 'difference', got {by!r}")
    _check_locations(release_location, input_location, output_location)
    published, manifest = _checked_release(release_location)
    found = shards.discover(input_location)
    if not found:
        raise CleanError(f"{input_location}: no parquet shards to clean")
    reads = _release_files(manifest, found, by, variant)
    problems = verification.file_problems(published, manifest, sorted(set(reads)))
    if problems:
        raise UnverifiedRelease(f"{published}: not used to clean: {'; '.join(problems)} (check it with relaion verify)")
    storage.check_writable(output_location, "--output")
    report_path = storage.join(output_location, "clean-report.json")
    storage.remove(report_path)  # an older report must not vouch for this run's output
    written: list[str] = []
    try:
        with interrupts.deferred():  # stopped between batches: a signal inside a pyarrow read looked like a bad file
            cleaned = _clean_shards(published, manifest, found, by, variant, output_location, written, progress)
            interrupts.raise_if_signalled()
    except BaseException:
        for path in written:
            storage.remove(path)
        raise
    result = {
        "release": manifest["version"],
        "by": by,
        "variant": variant if by == "difference" else None,
        "shards": [asdict(c) for c in cleaned],
        "rows_in": sum(c.rows_in for c in cleaned),
        "rows_removed": sum(c.rows_removed for c in cleaned),
    }
    storage.write_json_atomic(result, report_path)
    return result


def _clean_shards(published: str, manifest: dict, found: list[shards.Shard], by: str, variant: str,
                  output_location: str, written: list[str], progress) -> list[ShardCleaned]:  # fmt: skip
    """Write each cleaned shard (appending its path to `written` before writing it)."""
    removal_list = storage.join(published, report.REMOVAL_LIST)
    cleaned = []
    for index, shard in enumerate(found, start=1):
        started = time.perf_counter()
        parquet = shards.open_parquet(shard.path)
        roles = schemas.detect(parquet.schema_arrow, shard.path)
        hashes = np.concatenate(
            [_hashes(b, roles) for b in parquet.iter_batches(batch_size=variants.BATCH_ROWS)]
            or [np.array([], dtype=np.int64)]
        )
        if by == "difference":
            entry = manifest["shards"][shard.name]
            keep_rows = np.isin(hashes, row_hashes.of_file(storage.join(published, entry["files"][variant]["path"])))
        else:
            keep_rows = ~_listed(hashes, removal_list)

        def keep(batch: pa.RecordBatch, first: int, keep_rows=keep_rows) -> pa.Array:
            interrupts.raise_if_signalled()
            return pa.array(keep_rows[first : first + batch.num_rows])

        destination = storage.join(output_location, shard.file_name)
        written.append(destination)
        stats = variants.filter_shard(shard.path, destination, keep)
        done = ShardCleaned(shard.name, stats.rows_in, stats.rows_in - stats.rows_out, stats.rows_out,
                            round(time.perf_counter() - started, 3))  # fmt: skip
        cleaned.append(done)
        progress(f"[{index}/{len(found)}] {shard.name}: {done.rows_in:,} rows, {done.rows_removed:,} removed")
    return cleaned
