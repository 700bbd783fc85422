"""Releases: assemble the shards that passed their checks into a versioned, verifiable release.

Layout under the release location:

    <release>/<version>/manifest.json
    <release>/<version>/research/<shard>.parquet
    <release>/<version>/research-safe/<shard>.parquet
    <release>/latest                      (the version a reader should use)

The version is a digest of what the release holds, so publishing the same inputs twice gives the same version
and writes nothing new. A release is assembled under a temporary folder, its manifest written last, then the
folder is renamed into place and `latest` replaced: a reader never sees a partial release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from relaion_pipeline import blocklists, checks, matching, pipeline, report, schemas, shards, storage
from relaion_pipeline.pipeline import RESEARCH, RESEARCH_SAFE, Work, read_stats
from relaion_pipeline.settings import Settings

FORMAT = "relaion-release/1"
VARIANTS = (RESEARCH, RESEARCH_SAFE)


class ReleaseError(RuntimeError):
    """A release that cannot be published or does not verify."""


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("relaion-pipeline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def plan(settings: Settings, shard_names: list[str]) -> tuple[dict, dict]:
    """Which shards can be published (with their stats) and which are held back (with the reason)."""
    work = Work(settings.work)
    current_version, _ = blocklists.read_current(work.blocklist_dir)
    ready, held_back = {}, {}
    for name in sorted(shard_names):
        try:
            research = read_stats(settings, RESEARCH, name)
            safe = read_stats(settings, RESEARCH_SAFE, name)
            removals = read_stats(settings, "removals", name)
        except Exception as error:  # a missing stage is a reason to hold back, not to stop the release
            held_back[name] = str(error)
            continue
        why = _stale(settings, name, current_version, removals, research, safe)
        if why:
            held_back[name] = why
            continue
        ok, why = checks.passed(settings, name)
        if not ok:
            held_back[name] = why
            continue
        ready[name] = {"removals": removals, RESEARCH: research, RESEARCH_SAFE: safe}
    return ready, held_back


def _stale(settings: Settings, name: str, version: str, removals: dict, research: dict, safe: dict) -> str:
    """Why a shard's outputs do not form one consistent, current chain (empty when they do)."""
    work = Work(settings.work)
    if any(stats["blocklist_version"] != version for stats in (removals, research, safe)):
        return f"matched against blocklist {removals['blocklist_version']}, current is {version}"
    changed = pipeline.inputs_changed(settings, name, removals)
    if changed:
        return changed
    if storage.size_and_sha256(work.removals(name))[1] != research["removals_sha256"]:
        return "research was written from an older removals table"
    if research["sha256"] != safe["research_sha256"]:
        return "research-safe was written from an older research file"
    return ""


def _manifest(settings: Settings, ready: dict, held_back: dict, blocklist_version: str) -> dict:
    shards = {}
    for name, stats in ready.items():
        shards[name] = {
            "rows_in": stats["removals"]["rows_in"],
            "rows_removed": stats["removals"]["rows_removed"],
            "removed_by_kind": stats["removals"]["removed_by_kind"],
            "files": {
                variant: {
                    "path": f"{variant}/{name}.parquet",
                    "rows": stats[variant]["rows_out"],
                    "bytes": stats[variant]["bytes"],
                    "sha256": stats[variant]["sha256"],
                }
                for variant in VARIANTS
            },
        }
    content = {
        "format": FORMAT,
        "blocklist_version": blocklist_version,
        "thresholds": {
            "research_threshold": settings.research_threshold,
            "safe_threshold": settings.safe_threshold,
            "unsafe_tags": settings.unsafe_tag_values,
            "missing_score": settings.missing_score,
        },
        "code_version": code_version(),
        "shards": shards,
        "held_back": held_back,
        "totals": {
            "shards": len(shards),
            "held_back": len(held_back),
            "rows_in": sum(s["rows_in"] for s in shards.values()),
            "rows_removed": sum(s["rows_removed"] for s in shards.values()),
            **{
                f"rows_{variant.replace('-', '_')}": sum(s["files"][variant]["rows"] for s in shards.values())
                for variant in VARIANTS
            },
        },
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"version": digest[:16], **content}


def publish(settings: Settings, shard_names: list[str]) -> dict:
    """Publish every shard of `shard_names` that passed its checks; return the manifest.

    Locally the release is assembled in a hidden folder and renamed into place; on an object store its files
    are written under the version prefix and it becomes visible when `manifest.json` (written last) exists.
    `latest` is replaced after that.
    """
    started = time.perf_counter()
    work = Work(settings.work)
    blocklist_version, _ = blocklists.read_current(work.blocklist_dir)
    ready, held_back = plan(settings, shard_names)
    manifest = _manifest(settings, ready, held_back, blocklist_version)
    final = storage.join(settings.release, manifest["version"])
    if not storage.exists(storage.join(final, "manifest.json")):
        local = storage.is_local(settings.release)
        staging = (
            storage.join(settings.release, f".tmp-{manifest['version']}-{uuid.uuid4().hex[:8]}") if local else final
        )
        try:
            for name in ready:
                for variant in VARIANTS:
                    storage.copy(work.variant(variant, name), storage.join(staging, variant, f"{name}.parquet"))
            for name, entry in manifest["shards"].items():  # the work files may have changed while copying
                for variant, file in entry["files"].items():
                    _, digest = storage.size_and_sha256(storage.join(staging, file["path"]))
                    if digest != file["sha256"]:
                        raise ReleaseError(f"shard {name!r}: {variant} changed while the release was assembled")
            docs, removal_info = report.documents(settings, manifest, ready)
            listed = {}
            for doc_name, data in docs.items():
                storage.write_bytes_atomic(data, storage.join(staging, doc_name))
                listed[doc_name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            stamped = manifest | {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "documents": listed,
                "removal_list": removal_info,
            }
            storage.write_json_atomic(stamped, storage.join(staging, "manifest.json"))
            if local:
                if os.path.exists(final):  # an earlier attempt died before its manifest: replace it
                    shutil.rmtree(final)
                os.replace(staging, final)
        finally:
            if local and os.path.exists(staging):
                shutil.rmtree(staging)
    storage.write_text_atomic(manifest["version"] + "\n", storage.join(settings.release, "latest"))
    return manifest | {"path": final, "seconds": round(time.perf_counter() - started, 3)}


def resolve(location: str) -> str:
    """A release: `location` itself when it holds a manifest, else the version its `latest` names."""
    with storage.reaching(location):
        return _resolve(location)


def _resolve(location: str) -> str:
    if storage.exists(storage.join(location, "manifest.json")):
        return location
    latest = storage.join(location, "latest")
    if storage.exists(latest):
        return storage.join(location, storage.read_text(latest).strip())
    raise ReleaseError(f"{location}: no manifest.json and no 'latest' pointer: not a release")


def _subset_problems(release: str, name: str, files: dict) -> list[str]:
    """research-safe must hold only rows that research holds (compared by LAION hash)."""
    from relaion_pipeline.clean import _file_hashes

    research = _file_hashes(storage.join(release, files[RESEARCH]["path"]))
    safe = _file_hashes(storage.join(release, files[RESEARCH_SAFE]["path"]))
    extra = int((~np.isin(safe, research)).sum())
    return [f"{name}: {extra} research-safe rows are not in research"] if extra else []


def _list_problems(release: str, manifest: dict, blocklist_location: str, work: str) -> list[str]:
    """Rows of any published file that the given partner lists match (counted by kind, never shown)."""
    settings = Settings(work=work, keywords=storage.join(work, "no-keywords.txt"))
    merged = blocklists.load(blocklist_location, settings)
    path = blocklists.write(merged, storage.join(work, "blocklist"))
    kinds = set(merged.kinds)
    storage.write_text_atomic("", settings.keywords)  # lists only: the keyword rule is not a list
    con = matching.connect(settings)
    storage.register(con, release)
    problems = []
    try:
        for name, entry in manifest.get("shards", {}).items():
            for file in entry.get("files", {}).values():
                file_path = storage.join(release, file["path"])
                roles = schemas.detect(shards.open_parquet(file_path).schema_arrow, file_path)
                inputs = matching.MatchInputs(name, file_path, roles, path, None)
                found = matching.find_removals(con, inputs, kinds, settings)
                if found.num_rows:
                    by_kind = Counter(found.column("kind").to_pylist())
                    rows = len(set(found.column("row_number").to_pylist()))
                    problems.append(f"{file['path']}: {rows} rows match the lists ({dict(sorted(by_kind.items()))})")
    finally:
        con.close()
    return problems


def verify(location: str, blocklist_location: str | None = None) -> tuple[dict, list[str]]:
    """Recompute sizes, checksums and row counts of a release, check that research-safe is a subset of research
    and, when partner lists are given, that no published row matches them. Returns the manifest and every
    problem found."""
    release = resolve(location)
    try:
        manifest = storage.read_json(storage.join(release, "manifest.json"))
    except (OSError, ValueError) as error:
        raise ReleaseError(f"{release}/manifest.json: unreadable ({error})") from None
    problems = []
    listed = set()
    for name, entry in manifest.get("shards", {}).items():
        files = entry.get("files", {})
        for variant in VARIANTS:
            file = files.get(variant)
            if file is None:
                problems.append(f"{name}: manifest lists no {variant} file")
                continue
            path = storage.join(release, file["path"])
            listed.add(file["path"])
            if not storage.exists(path):
                problems.append(f"{file['path']}: missing")
                continue
            size, digest = storage.size_and_sha256(path)
            if digest != file["sha256"]:
                problems.append(f"{file['path']}: sha256 {digest} does not match manifest {file['sha256']}")
            if size != file["bytes"]:
                problems.append(f"{file['path']}: {size} bytes, manifest says {file['bytes']}")
            try:
                rows = storage.num_rows(path)
            except Exception as error:  # a damaged file is a problem to report, not a crash
                problems.append(f"{file['path']}: not readable parquet ({error})")
                continue
            if rows != file["rows"]:
                problems.append(f"{file['path']}: {rows} rows, manifest says {file['rows']}")
        if {RESEARCH, RESEARCH_SAFE} <= files.keys() and files[RESEARCH_SAFE]["rows"] > files[RESEARCH]["rows"]:
            problems.append(f"{name}: research-safe has more rows than research")
        elif not problems and {RESEARCH, RESEARCH_SAFE} <= files.keys():
            problems += _subset_problems(release, name, files)
    for doc_name, doc in manifest.get("documents", {}).items():
        path = storage.join(release, doc_name)
        if not storage.exists(path):
            problems.append(f"{doc_name}: missing")
        elif storage.size_and_sha256(path) != (doc["bytes"], doc["sha256"]):
            problems.append(f"{doc_name}: size or sha256 does not match the manifest")
    fs, root = storage.filesystem(release)
    root = root.rstrip("/")
    for variant in VARIANTS:
        present = fs.find(f"{root}/{variant}") if fs.isdir(f"{root}/{variant}") else []
        for path in sorted(present):
            relative = path[len(root) + 1 :]
            if relative.endswith(".parquet") and relative not in listed:
                problems.append(f"{relative}: file not listed in the manifest")
    if blocklist_location and not problems:
        with tempfile.TemporaryDirectory(prefix="relaion-verify-") as work:
            problems += _list_problems(release, manifest, blocklist_location, work)
    return manifest, problems
