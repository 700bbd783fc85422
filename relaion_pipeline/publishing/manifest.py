"""A release's manifest: what it promises, sealed by its version.

The version is the first 16 hex digits of the sha256 of the manifest's content: every field except `version`
itself and `created` (the time of publishing, which must not make the same release twice two versions). The
content holds every file with its rows, bytes and sha256, the documents (card, transparency report, removal
list) with theirs, the settings that shaped the release, what was held back and which shards left. So an edit
to any of it, a threshold, a total or a held-back shard, no longer matches the version, and a reader who
checks the version and then the files has checked everything the release says.

Releases of format 1 digested their content without `documents` and `removal_list`; they are checked by that
rule, which leaves those two fields unprotected (their files are still compared with their checksums).
"""

from __future__ import annotations

import hashlib
import json
import re

from relaion_pipeline.core import storage

FORMAT = "relaion-release/2"
UNSEALED = {  # the fields each format's version does not digest
    "relaion-release/1": ("version", "created", "documents", "removal_list"),
    FORMAT: ("version", "created"),
}
VERSION = re.compile(r"[0-9a-f]{16}")
VARIANT_FILES = ("research", "research-safe")
REMOVAL_LIST = "removal-list.parquet"  # the row hashes a copy must drop, when published (`report.removal_list`)


class ReleaseError(RuntimeError):
    """A release that cannot be published or does not verify."""


class ManifestError(ReleaseError):
    """A manifest or `latest` pointer that cannot be read as one; the message names the file."""


def digest(content: dict, format: str = FORMAT) -> str:
    """The version of a manifest's content under the rule of `format` (see UNSEALED)."""
    sealed = {key: value for key, value in content.items() if key not in UNSEALED[format]}
    return hashlib.sha256(json.dumps(sealed, sort_keys=True).encode()).hexdigest()[:16]


def seal(content: dict) -> dict:
    """`content` with its version in front."""
    return {"version": digest(content), **content}


def totals(shards: dict, held_back: dict) -> dict:
    """The totals a manifest states, computed from its shards: a manifest whose totals differ is not honest."""
    return {
        "shards": len(shards),
        "held_back": len(held_back),
        "rows_in": sum(s["rows_in"] for s in shards.values()),
        "rows_removed": sum(s["rows_removed"] for s in shards.values()),
        **{
            f"rows_{variant.replace('-', '_')}": sum(s["files"][variant]["rows"] for s in shards.values())
            for variant in VARIANT_FILES
        },
    }


def read(release: str) -> dict:
    """The manifest of the release folder `release`, or a ManifestError naming the file and what was expected."""
    path = storage.join(release, "manifest.json")
    try:
        with storage.reaching(path):
            value = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; expected the release's manifest") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error}); expected the release's manifest") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: holds a JSON {type(value).__name__}, expected a JSON object (a release manifest)")
    return value


def problems(manifest: dict) -> list[str]:
    """Why a manifest is not what its version says (empty when it is): unknown format, a version that is not
    the digest of its content, totals that are not the sum of its shards, or a shape that cannot be read."""
    format = manifest.get("format")
    if format not in UNSEALED:
        return [f"manifest.json: format {format!r} is not one this version of relaion reads ({', '.join(UNSEALED)})"]
    found = []
    recomputed = digest(manifest, format)
    if manifest.get("version") != recomputed:
        found.append(
            f"manifest.json: version {manifest.get('version')!r} is not the digest of its content ({recomputed}):"
            " the manifest was edited after it was published"
        )
    try:
        if manifest["totals"] != totals(manifest["shards"], manifest["held_back"]):
            found.append("manifest.json: totals are not the sums of its shards")
        for name, entry in manifest["shards"].items():
            for variant in VARIANT_FILES:
                file = entry["files"][variant]
                if file["path"] != f"{variant}/{name}.parquet":
                    found.append(f"manifest.json: shard {name!r} names {variant} file {file['path']!r}")
                if not (isinstance(file["rows"], int) and isinstance(file["bytes"], int)):
                    raise TypeError(f"rows and bytes of {file['path']} are not whole numbers")
        for name in manifest.get("documents", {}):
            if "/" in name or name.startswith("."):
                found.append(f"manifest.json: document {name!r} is not a file name of the release folder")
    except (KeyError, TypeError, AttributeError) as error:
        found.append(f"manifest.json: malformed ({type(error).__name__}: {error}); expected a release manifest")
    return found


def read_latest(location: str) -> str | None:
    """The version `<location>/latest` names (None without a `latest`); a ManifestError naming the file when
    it is empty, not text, or names anything but a version folder directly inside `location`."""
    path = storage.join(location, "latest")
    with storage.reaching(path):
        if not storage.exists(path):
            return None
        fs, inner = storage.filesystem(path)
        if fs.isdir(inner):
            raise ManifestError(f"{path}: a folder; expected a file naming a release version (16 hex digits)")
        raw = fs.cat_file(inner)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not text; expected the name of a release version (16 hex digits)") from None
    if not VERSION.fullmatch(name):
        shown = repr(name[:40]) if name else "empty"
        raise ManifestError(
            f"{path}: {shown} is not a release version; expected 16 hex digits naming a version folder beside it"
        )
    return name
