"""Releases: assemble the shards that passed their checks into a versioned, verifiable release.

Layout under the release location:

    <release>/<version>/manifest.json
    <release>/<version>/research/<shard>.parquet
    <release>/<version>/research-safe/<shard>.parquet
    <release>/latest                      (the version a reader should use)

The version is a digest of what the release holds (`manifest`), so publishing the same inputs twice gives the
same version and writes nothing new. A release is assembled under a temporary folder, its manifest written last,
then the folder is renamed into place and `latest` replaced: a reader never sees a partial release.

`latest` never gets worse: a release with no shard is never published, nor one that drops a shard of the
release `latest` names because that shard failed or is held back (unless the operator sets
`allow_partial_release`). Checking a published release is `verification`'s job.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from relaion_pipeline import status
from relaion_pipeline.core import cache, progress, shard_lock, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.publishing import manifest as manifests
from relaion_pipeline.publishing import report
from relaion_pipeline.publishing.manifest import ReleaseError
from relaion_pipeline.publishing.verification import resolve, verify  # noqa: F401  (where callers have always found them)
from relaion_pipeline.stages.work import RESEARCH, RESEARCH_SAFE, Work

VARIANTS = (RESEARCH, RESEARCH_SAFE)
log = logging.getLogger(__name__)


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("relaion-pipeline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def plan(settings: Settings, shard_names: list[str]) -> tuple[dict[str, status.Chain], dict[str, str]]:
    """Which shards can be published (with their chain of stage records) and which are held back (with the
    reason), as `status` says."""
    ready, held_back = {}, {}
    for found in status.of_shards(settings, shard_names):
        if found.publishable:
            ready[found.name] = found.chain
        else:
            held_back[found.name] = found.reason
    return ready, held_back


def _settings(settings: Settings) -> dict:
    """Every setting that shapes a release besides its thresholds: part of the content, so of the version."""
    return {
        "license": settings.license,
        "removal_list_max_match_share": settings.removal_list_max_match_share,
        "allow_partial_release": settings.allow_partial_release,
        "skip_image_matching": settings.skip_image_matching,
    }


def _content(
    settings: Settings, ready: dict[str, status.Chain], held_back: dict, left: dict, blocklist_version: str
) -> dict:
    """What a release holds and how it was made, before its documents are added (they are made from it)."""
    shards = {}
    for name, chain in ready.items():
        shards[name] = {
            "family": chain.removals.family,  # its schema family (core.schemas): the card's configs follow it
            "rows_in": chain.removals.rows_in,
            "rows_removed": chain.removals.rows_removed,
            "removed_by_kind": chain.removals.removed_by_kind,
            "files": {
                variant: {
                    "path": f"{variant}/{name}.parquet",
                    "rows": chain.of(variant).rows_out,
                    "bytes": chain.of(variant).bytes,
                    "sha256": chain.of(variant).sha256,
                }
                for variant in VARIANTS
            },
        }
    return {
        "format": manifests.FORMAT,
        "blocklist_version": blocklist_version,
        "thresholds": {
            "research_threshold": settings.research_threshold,
            "safe_threshold": settings.safe_threshold,
            "unsafe_tags": settings.unsafe_tag_values,
            "missing_score": settings.missing_score,
        },
        "settings": _settings(settings),
        "code_version": code_version(),
        "shards": shards,
        "held_back": held_back,
        "left": left,
        "totals": manifests.totals(shards, held_back),
    }


def previous(location: str) -> dict | None:
    """The manifest of the release `latest` names now (None when there is no `latest`): what a new release
    replaces. A `latest` or manifest that cannot be read stops the release, naming the file."""
    try:
        version = manifests.read_latest(location)
        return None if version is None else manifests.read(storage.join(location, version))
    except manifests.ManifestError as error:
        raise ReleaseError(
            f"{error}; fix or remove it, then run again (the release it names is what a new one replaces)"
        ) from None


def preflight(settings: Settings) -> None:
    """Fail before any work on what would stop the release at its end: a release location that cannot hold
    releases (a file, or a `latest` that cannot be read). (The keyword file every shard's removals need is
    read before it, `pipeline.removal_rules`.)"""
    check_location(settings.release)


def check_location(location: str) -> None:
    """Fail before any work when `location` cannot hold releases: a file, or a `latest` that cannot be read."""
    fs, path = storage.filesystem(location)
    with storage.reaching(location):
        if fs.exists(path) and not fs.isdir(path):
            raise ReleaseError(
                f"release location {location} (--release, RELAION_RELEASE) is a file; expected a folder of"
                " releases, or a location that does not exist yet"
            )
    previous(location)


def _refusal(settings: Settings, ready: dict, held_back: dict, last: dict | None) -> str:
    """Why this release must not be published (empty when it may): it would hold no shard, or it would replace
    a release that held shards of the input which are now held back, without the operator asking for that."""
    reasons = "; ".join(f"{name}: {why}" for name, why in sorted(held_back.items()))
    if not ready:
        where = (
            f"none of the {len(held_back)} shards of {settings.shards} passed ({reasons})"
            if held_back
            else (f"{settings.shards} holds no shard")
        )
        kept = f"; latest stays at {last['version']}" if last else ""
        return f"no release published: a release with no shards is never published, and {where}{kept}"
    if settings.allow_partial_release or last is None:
        return ""
    lost = {name: why for name, why in sorted(held_back.items()) if name in last.get("shards", {})}
    if not lost:
        return ""
    named = "; ".join(f"{name}: {why}" for name, why in lost.items())
    return (
        f"no release published: {len(lost)} shard(s) of release {last['version']} failed or are held back ({named});"
        f" latest stays at {last['version']}. Fix them and run again, or publish without them with"
        " --allow-partial-release (RELAION_ALLOW_PARTIAL_RELEASE=1)"
    )


def _same(content: dict, last: dict | None) -> bool:
    """True when `last` is the release `content` would make, apart from which shards left since (a rerun after a
    shard left must not make a new release that only forgets that it left)."""
    if last is None or last.get("format") != content["format"]:
        return False
    ignore = ("version", "created", "documents", "removal_list", "left")
    return {k: v for k, v in last.items() if k not in ignore} == {k: v for k, v in content.items() if k != "left"}


def _clear_leftovers(location: str) -> None:
    """Remove what publishes killed midway left in the release location: locally `.tmp-*` (staging folders and
    partial files); on an object store, version prefixes without `manifest.json` (`_clear_unpublished`). Called
    holding the release location's lock, so no living publish owns them."""
    if not storage.is_local(location):
        _clear_unpublished(location)
        return
    if not os.path.isdir(location):
        return
    for entry in os.scandir(location):
        if entry.name.startswith(".tmp-"):
            try:
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
            except OSError as error:  # a read-only location: this run cannot leave anything there either
                log.warning("%s: left by a publish that was stopped, cannot be removed (%s)", entry.path, error)


def _clear_unpublished(location: str) -> None:
    """Remove the objects under each version prefix of an object store that has no `manifest.json`: a release
    never made visible, whose objects a later publish of that version must not take in. Not the version `latest`
    names (its missing manifest stops the publish, naming it; the objects stay for the operator)."""
    fs, root = storage.filesystem(location)
    if not fs.isdir(root):
        return
    try:
        current = manifests.read_latest(location)
    except manifests.ManifestError:
        current = None
    for entry in fs.ls(root, detail=True, refresh=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        version = storage.join(location, name)
        if entry["type"] != "directory" or not manifests.VERSION.fullmatch(name) or name == current:
            continue
        if not storage.exists(storage.join(version, "manifest.json")):
            storage.remove(version)


def publish(settings: Settings, shard_names: list[str]) -> dict:
    """Publish the shards of `shard_names` (the shards in the input) that passed their checks; return the
    manifest. Refuses (ReleaseError, `latest` untouched) a release with no shard, or one that would drop a shard
    the current release holds because it failed or is held back, unless `allow_partial_release`. Shards of the
    current release that are no longer in the input are recorded as `left`.

    Locally the release is assembled in a hidden folder and renamed into place; on an object store its files
    are written under the version prefix and it becomes visible when `manifest.json` (written last) exists.
    `latest` is replaced after that, and only when it names another version.
    """
    started = time.perf_counter()
    check_location(settings.release)  # the release job runs without `relaion run`'s preflight too (the UI)
    with shard_lock.holding(settings.work, f"release {settings.release}"), shard_lock.publishing(settings.release):
        _clear_leftovers(settings.release)
        manifest = _publish(settings, shard_names)
    final = storage.join(settings.release, manifest["version"])
    return manifest | {"path": final, "seconds": round(time.perf_counter() - started, 3)}


def _publish(settings: Settings, shard_names: list[str]) -> dict:
    work = Work(settings.work)
    blocklist_version, _ = blocklists.read_current(work.blocklist_dir)
    last = previous(settings.release)
    ready, held_back = plan(settings, shard_names)
    refusal = _refusal(settings, ready, held_back, last)
    if refusal:
        raise ReleaseError(refusal)
    present = set(shard_names)
    foreign = _foreign(settings, last, present)
    if foreign:
        raise ReleaseError(foreign)
    left = {
        name: f"no longer in the input; published in release {last['version']}"
        for name in sorted(last.get("shards", {}) if last else ())
        if name not in present
    }
    content = _content(settings, ready, held_back, left, blocklist_version)
    try:
        if _same(content, last):  # the release `latest` names is this one: only a damaged file is put back
            return last | {"mended": _mend(settings, last)}
        docs, removal_info = report.documents(settings, content, ready)
        listed = {n: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for n, data in docs.items()}
        manifest = manifests.seal(content | {"documents": listed, "removal_list": removal_info})
        final = storage.join(settings.release, manifest["version"])
        mended = []
        if not storage.exists(storage.join(final, "manifest.json")):
            _assemble(settings, manifest, ready, docs)
        else:  # published before (`latest` comes back to it): as it was published, or put back so, or refused
            mended = _mend(settings, manifest)
        if last is None or last["version"] != manifest["version"]:
            storage.write_text_atomic(manifest["version"] + "\n", storage.join(settings.release, "latest"))
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise ReleaseError(
            f"release location {settings.release}: cannot write ({error.strerror or error}); expected a folder"
            " this process may write to (--release, RELAION_RELEASE)"
        ) from None
    return manifest | {"mended": mended}


def _mend(settings: Settings, manifest: dict) -> list[str]:
    """Make the published release `manifest` describes what it lists again before it stays or becomes `latest`:
    a shard file edited or replaced after publishing (a hard link shares its bytes with the work file, which
    root may write) is put back from the work location when the work file is the one listed, each file
    atomically. Refused (ReleaseError, `latest` untouched) when a document is damaged or the work location no
    longer holds a listed file. Returns the files put back (paths inside the release)."""
    version = manifest["version"]
    final = storage.join(settings.release, version)
    work = Work(settings.work)
    if storage.is_local(final):  # what a put-back killed midway left: never part of the release
        for leftover in Path(final).rglob(".tmp-mend-*"):
            leftover.unlink()
    refused = (
        f"; latest stays where it was. Remove {final} and run again to publish it anew"
        " (or publish otherwise, e.g. with the shard's settings of now)"
    )
    for doc_name, doc in manifest.get("documents", {}).items():
        path = storage.join(final, doc_name)
        if not storage.exists(path) or cache.sha256(settings.work, path) != (doc["bytes"], doc["sha256"]):
            raise ReleaseError(f"release {version}: {doc_name} is not what its manifest lists{refused}")

    def intact(job: tuple[str, str, dict]) -> bool:  # a stat (a HEAD on S3) each, several at once
        path = storage.join(final, job[2]["path"])
        return storage.exists(path) and cache.sha256(settings.work, path) == (job[2]["bytes"], job[2]["sha256"])

    jobs = [
        (name, variant, file) for name, entry in manifest["shards"].items() for variant, file in entry["files"].items()
    ]
    with ThreadPoolExecutor(max_workers=PLACING_THREADS) as pool:
        changed = [job for job, ok in zip(jobs, pool.map(intact, jobs), strict=True) if not ok]
    mended = []
    for name, variant, file in changed:
        path, listed = storage.join(final, file["path"]), (file["bytes"], file["sha256"])
        source = work.variant(variant, name)
        if not storage.exists(source) or cache.sha256(settings.work, source) != listed:
            raise ReleaseError(
                f"release {version}: {file['path']} is not what its manifest lists, and the work location no"
                f" longer holds the file it published{refused}"
            )
        if storage.is_local(path):
            beside = str(Path(path).with_name(f".tmp-mend-{uuid.uuid4().hex[:8]}-{Path(path).name}"))
            _place(settings, name, variant, source, beside, listed)
            os.replace(beside, path)
        else:  # an object is replaced whole
            _place(settings, name, variant, source, path, listed)
        cache.remember_sha256(settings.work, path, *listed)
        mended.append(file["path"])
    return mended


PLACING_THREADS = 16  # files placed at once: each is a link, or a request the store serves (copies on S3)


def _place_shards(settings: Settings, staging: str, manifest: dict, ready: dict) -> dict[str, tuple[int, str]]:
    """Put each shard's files under the release being assembled, several at once, without moving their bytes
    where the store allows (`storage.place`: a hard link locally, a server-side copy on S3). Each placed file
    must have the sha256 the manifest lists: a link or a server-side copy has the bytes of the work file, whose
    digest is known while it is unchanged (`cache.sha256`: one stat); a streamed copy is digested as written.
    Returns the size and sha256 of each file placed, by its path inside the release."""
    jobs = [(name, variant) for name in ready for variant in VARIANTS]
    tracker = progress.Progress("release: shards' files placed", len(jobs), "files")

    def place(job: tuple[str, str]) -> tuple[str, tuple[int, str]]:
        name, variant = job
        file = manifest["shards"][name]["files"][variant]
        source, destination = Work(settings.work).variant(variant, name), storage.join(staging, file["path"])
        return file["path"], _place(settings, name, variant, source, destination, (file["bytes"], file["sha256"]))

    placed = {}
    with ThreadPoolExecutor(max_workers=PLACING_THREADS) as pool:
        for done, (path, known) in enumerate(pool.map(place, jobs), start=1):
            placed[path] = known
            tracker.update(done)
    tracker.finish()
    return placed


def check(settings: Settings, manifest: dict) -> tuple[list[str], list[str]]:
    """The release's own check, right after `publish`: what re-verifying the release finds (`verify`, with the
    digests of the files publishing placed taken from the cache, and each shard's subset and threshold from its
    blocking checks when they passed on exactly the bytes published), and the shards published without passed
    checks. Its cost grows with the number of files, not with their size; `relaion verify` reads every byte."""

    def proved(name: str, entry: dict) -> bool:
        return status.proved(settings, name, {variant: file["sha256"] for variant, file in entry["files"].items()})

    digests = functools.partial(cache.sha256, settings.work)
    _, problems = verify(manifest["path"], digests=digests, proved=proved)
    unchecked = [name for name in manifest["shards"] if not status.checks_passed(settings, name)[0]]
    return problems, unchecked


def _place(
    settings: Settings, name: str, variant: str, source: str, destination: str, listed: tuple[int, str]
) -> tuple[int, str]:
    """Place the work file `source` at `destination` (`storage.place`) and return the size and sha256 of what
    is there, which must be `listed` (ReleaseError otherwise). A file the store placed (a link, a server-side
    copy) has the digest the work file had when it was the file placed; one streamed across, of what was
    written; one that is neither (the work file was replaced meanwhile) is read."""
    *known, trusted = cache.sha256_as_of(settings.work, source)  # the work file's, before it is placed
    how, written = storage.place(source, destination)
    if written is None and not _same_file(cache.fingerprint(destination), trusted):
        written = storage.size_and_sha256(destination)  # another file got there meanwhile: its own bytes
    elif how == storage.LINKED:  # the work file's change time moved (a link): it is as it was
        cache.remember_sha256(settings.work, source, *known)
    size, digest = tuple(known) if written is None else written
    if (size, digest) != listed:
        raise ReleaseError(
            f"shard {name!r}: its {variant} file changed since its stage wrote it (sha256 {digest}, the record"
            f" says {listed[1]}); run again to make it anew"
        )
    return size, digest


def _same_file(placed: dict, trusted: dict) -> bool:
    """Whether a file placed by the store (a link, a server-side copy) is the one whose digest was known: the
    same inode, size and modification time locally (a link moves the change time), the same ETag on S3 (a
    server-side copy keeps it). A work file replaced between its digest and its placing is not."""
    if "inode" in trusted:
        keys = ("inode", "bytes", "modified")
        return all(placed.get(key) == trusted.get(key) for key in keys)
    return trusted.get("etag") is not None and placed.get("etag") == trusted.get("etag")


def _foreign(settings: Settings, last: dict | None, present: set[str]) -> str:
    """Why this run must not replace `last` (empty when it may): `last` holds shards that this run's input lacks
    and that this work location never matched, so they did not leave its input: `last` was made by another
    pipeline (another work location with other shards publishing here, or a mistyped --shards), and replacing
    it would drop them. `allow_partial_release` publishes without them, recorded as left."""
    if last is None or settings.allow_partial_release:
        return ""
    work = Work(settings.work)
    unknown = sorted(n for n in last.get("shards", {}) if n not in present and not _matched_here(work, n))
    if not unknown:
        return ""
    named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return (
        f"no release published: release {last['version']} holds {len(unknown)} shard(s) that are not in"
        f" {settings.shards} and that work location {settings.work} never matched ({named}): it was published by"
        f" another pipeline (another --work or --shards), and this release would drop them; latest stays at"
        f" {last['version']}. Publish from the pipeline that has them, or without them with --allow-partial-release"
        " (RELAION_ALLOW_PARTIAL_RELEASE=1)"
    )


def _matched_here(work: Work, name: str) -> bool:
    """True when this work location has matched shard `name` (its removals are there, or failed there)."""
    return storage.exists(work.stats("removals", name)) or storage.exists(work.failure("removals", name))


def _assemble(settings: Settings, manifest: dict, ready: dict, docs: dict[str, bytes]) -> None:
    """Write the release's files and, last, its manifest under its version (through a hidden staging folder
    renamed into place, locally)."""
    final = storage.join(settings.release, manifest["version"])
    local = storage.is_local(settings.release)
    staging = storage.join(settings.release, f".tmp-{manifest['version']}-{uuid.uuid4().hex[:8]}") if local else final
    if not local:  # objects of a publish killed before its manifest: never part of this release
        storage.remove(final)
    try:
        placed = _place_shards(settings, staging, manifest, ready)
        for doc_name, data in docs.items():
            storage.write_bytes_atomic(data, storage.join(staging, doc_name))
        stamped = manifest | {"created": datetime.now(UTC).isoformat(timespec="seconds")}
        storage.write_json_atomic(stamped, storage.join(staging, "manifest.json"))
        if local:
            if os.path.exists(final):  # an earlier attempt died before its manifest: replace it
                shutil.rmtree(final)
            os.replace(staging, final)
        for path, known in placed.items():  # under the names readers use: the release's check reads none again
            cache.remember_sha256(settings.work, storage.join(final, path), *known)
    finally:
        if local and os.path.exists(staging):
            shutil.rmtree(staging)
