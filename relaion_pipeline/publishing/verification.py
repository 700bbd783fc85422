"""Checking a release against its manifest, as a person who downloaded it does (`relaion verify`), as `relaion
clean` does before it trusts a file, and as the release asset's check does right after publishing.

The manifest is first checked against its version (`manifest.problems`): a manifest that is not what its
version says is not used to judge the files. Then every listed file: size, sha256, rows; research-safe within
research and within the safe threshold the manifest records, on the data itself; every document; and no
parquet file under the version that the manifest does not list.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable

import numpy as np

from relaion_pipeline.core import row_hashes, schemas, shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.match import matching
from relaion_pipeline.publishing import manifest as manifests
from relaion_pipeline.publishing.manifest import ReleaseError
from relaion_pipeline.stages import variants
from relaion_pipeline.stages.work import RESEARCH, RESEARCH_SAFE

VARIANTS = (RESEARCH, RESEARCH_SAFE)


def resolve(location: str) -> str:
    """A release: `location` itself when it holds a manifest, else the version its `latest` names (which must be
    a version folder directly inside `location`)."""
    with storage.reaching(location):
        if storage.exists(storage.join(location, "manifest.json")):
            return location
        try:
            version = manifests.read_latest(location)
        except manifests.ManifestError as error:
            raise ReleaseError(str(error)) from None
    if version is None:
        if not storage.exists(location):
            raise ReleaseError(f"{location}: does not exist; expected a release folder or location (local or s3://)")
        raise ReleaseError(f"{location}: no manifest.json and no 'latest' pointer: not a release")
    return storage.join(location, version)


def read_manifest(release: str) -> dict:
    """The manifest of a release folder; a ReleaseError naming the file when it cannot be read as one."""
    try:
        return manifests.read(release)
    except manifests.ManifestError as error:
        raise ReleaseError(str(error)) from None


Digests = Callable[[str], tuple[int, str]]  # a file's size and sha256: read (the default), or known


def file_problems(release: str, manifest: dict, paths: list[str]) -> list[str]:
    """Files of the release (paths inside it) whose size or sha256 is not what the manifest lists for them, or
    that it does not list at all."""
    listed = {f["path"]: f for e in manifest.get("shards", {}).values() for f in e.get("files", {}).values()}
    listed |= {name: doc for name, doc in manifest.get("documents", {}).items()}
    found = []
    for path in paths:
        entry = listed.get(path)
        if entry is None:
            found.append(f"{path}: not listed in the manifest")
        elif not storage.exists(storage.join(release, path)):
            found.append(f"{path}: missing")
        elif storage.size_and_sha256(storage.join(release, path)) != (entry["bytes"], entry["sha256"]):
            found.append(f"{path}: size or sha256 does not match the manifest")
    return found


def _subset_problems(release: str, name: str, files: dict) -> list[str]:
    """research-safe must hold only rows that research holds (compared by LAION hash)."""
    research = row_hashes.of_file(storage.join(release, files[RESEARCH]["path"]))
    safe = row_hashes.of_file(storage.join(release, files[RESEARCH_SAFE]["path"]))
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
                try:
                    roles = schemas.detect(shards.open_parquet(file_path).schema_arrow, file_path)
                except (OSError, ValueError):  # missing or not parquet: reported as such already
                    continue
                inputs = matching.MatchInputs(name, file_path, roles, path, None)
                found = matching.find_removals(con, inputs, kinds, settings)
                if found.num_rows:
                    by_kind = Counter(found.column("kind").to_pylist())
                    rows = len(set(found.column("row_number").to_pylist()))
                    problems.append(f"{file['path']}: {rows} rows match the lists ({dict(sorted(by_kind.items()))})")
    finally:
        con.close()
    return problems


def _unsafe_rows(path: str, thresholds: dict) -> int:
    """Rows of a research-safe file that its release's own recorded rule would have left out: scored above the
    safe threshold (or tagged unsafe, or without a score when the rule drops those)."""
    rule = Settings(
        safe_threshold=thresholds["safe_threshold"],
        unsafe_tags=",".join(thresholds["unsafe_tags"]),
        missing_score=thresholds["missing_score"],
    )
    parquet = shards.open_parquet(path, streaming=True)
    roles = schemas.detect(parquet.schema_arrow, path)
    columns = [c for c in (roles.punsafe, roles.nsfw) if c] or None
    unsafe = 0
    for batch in parquet.iter_batches(batch_size=variants.BATCH_ROWS, columns=columns):
        keep = variants.safe_keep_mask(batch, roles, rule).to_numpy(zero_copy_only=False)
        unsafe += int((~keep).sum())
    return unsafe


def _file_checks(
    release: str, name: str, files: dict, thresholds: dict, digests: Digests, proved: bool = False
) -> list[str]:
    """Size, sha256 and rows of a shard's files as listed; research-safe within research and within its rule
    (unless `proved`: the shard's blocking checks passed on exactly these bytes, `status.proved`)."""
    problems = []
    for variant in VARIANTS:
        file = files[variant]
        path = storage.join(release, file["path"])
        if not storage.exists(path):
            problems.append(f"{file['path']}: missing")
            continue
        size, digest = digests(path)
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
    if problems:
        return problems
    if files[RESEARCH_SAFE]["rows"] > files[RESEARCH]["rows"]:
        return [f"{name}: research-safe has more rows than research"]
    if proved:
        return problems
    problems += _subset_problems(release, name, files)
    try:
        unsafe = _unsafe_rows(storage.join(release, files[RESEARCH_SAFE]["path"]), thresholds)
    except (KeyError, TypeError, ValueError) as error:
        return [*problems, f"manifest.json: thresholds cannot be applied ({error})"]
    if unsafe:
        problems.append(
            f"{files[RESEARCH_SAFE]['path']}: {unsafe} rows above the recorded safe threshold"
            f" {thresholds['safe_threshold']} (or unsafe by its rule)"
        )
    return problems


def _unlisted(release: str, listed: set[str]) -> list[str]:
    """Files anywhere under the release folder that its manifest does not list (whatever their name: a reader
    of `*.parquet`, `*.PARQUET` or `*.parq` would load them as data)."""
    fs, root = storage.filesystem(release)
    root = root.rstrip("/")
    with storage.reaching(release):
        present = fs.find(root)
    relative = sorted(path[len(root) + 1 :] for path in present)
    return [f"{path}: file not listed in the manifest" for path in relative
            if path != "manifest.json" and path not in listed]  # fmt: skip


def verify(
    location: str,
    blocklist_location: str | None = None,
    digests: Digests = storage.size_and_sha256,
    proved: Callable[[str, dict], bool] = lambda name, entry: False,
) -> tuple[dict, list[str]]:
    """Check a release against its manifest: the version is the digest of the manifest's content (so nothing in
    it was edited), every listed file has its size, sha256 and rows, research-safe holds only rows of research
    and none above the recorded safe threshold, every document matches, no file is there unlisted, and
    a `latest` followed names this very version. With partner lists, also that no published row matches them.
    Returns the manifest (with `path`: the version folder checked) and every problem found.

    `relaion verify` reads every byte. The release's own check, right after publishing, learns the digests of
    the files it just placed from the work location's digest cache (`digests`), and takes the word of a shard's
    blocking checks for its subset and threshold when they passed on exactly the bytes listed (`proved`, given
    the shard's name and manifest entry): its cost grows with the number of files, not with their size."""
    release = resolve(location)
    manifest = read_manifest(release)
    problems = manifests.problems(manifest)
    if release != location and manifest.get("version") != release.rstrip("/").rsplit("/", 1)[-1]:
        problems.append(f"latest names {release.rsplit('/', 1)[-1]}, whose manifest says {manifest.get('version')!r}")
    if problems:  # a manifest that is not what it says is not used to judge the files
        return manifest | {"path": release}, problems
    listed = set(manifest.get("documents", {}))
    for name, entry in manifest["shards"].items():
        listed |= {file["path"] for file in entry["files"].values()}
        files = entry["files"]
        problems += _file_checks(release, name, files, manifest["thresholds"], digests, proved(name, entry))
    for doc_name, doc in manifest.get("documents", {}).items():
        path = storage.join(release, doc_name)
        if not storage.exists(path):
            problems.append(f"{doc_name}: missing")
        elif storage.size_and_sha256(path) != (doc["bytes"], doc["sha256"]):
            problems.append(f"{doc_name}: size or sha256 does not match the manifest")
    problems += _unlisted(release, listed)
    if blocklist_location:  # a changed file too: whether it holds a listed row is what its reader wants to know
        with tempfile.TemporaryDirectory(prefix="relaion-verify-") as work:
            problems += _list_problems(release, manifest, blocklist_location, work)
    return manifest | {"path": release}, problems
