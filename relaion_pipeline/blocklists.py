"""Partner lists: parse, validate, merge and version the hash lists sent by child-protection partners.

Layout: one folder per source under the blocklist location; inside it, CSV/TSV files with a header
`kind,value[,category]`, `<kind>.txt` files with one value per line, or parquet files with those columns.
`#` starts a comment. The merged list is versioned by the sha256 of its normalized, sorted content, so the same
entries always give the same version whatever the file layout or order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline import storage

HEX_LENGTHS = {"url_sha256": 64, "url_md5": 32, "image_md5": 32, "image_sha1": 40, "image_sha256": 64}
KINDS = (*HEX_LENGTHS, "domain")
URL_KINDS = ("url_sha256", "url_md5")
IMAGE_KINDS = ("image_md5", "image_sha1", "image_sha256")
DEFAULT_CATEGORY = "unspecified"
SCHEMA = pa.schema([("kind", pa.string()), ("value", pa.string()), ("source", pa.string()), ("category", pa.string())])

_HEX = re.compile(r"^[0-9a-f]+$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
_CATEGORY = re.compile(r"^[A-Za-z0-9_.\-]+$")


class BlocklistError(ValueError):
    """A partner list that cannot be used; the message names the file and line."""


@dataclass
class Blocklist:
    """The merged list: a table of (kind, value, source, category), sorted, plus its version."""

    table: pa.Table
    version: str
    sources: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> kind -> entries

    @property
    def entries(self) -> int:
        return self.table.num_rows


def normalize_value(kind: str, raw: str, where: str) -> str:
    """Validate one value of a kind and return its normalized form; `where` is `file:line` for errors."""
    if kind not in KINDS:
        raise BlocklistError(f"{where}: unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    value = raw.strip().lower()
    if kind == "domain":
        value = value.rstrip(".")
        labels = value.split(".")
        if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
            raise BlocklistError(
                f"{where}: {kind} value is not a plain host name with at least two labels"
                " (expected e.g. 'example.com', no scheme, path or port)"
            )
        return value
    expected = HEX_LENGTHS[kind]
    if len(value) != expected:
        raise BlocklistError(f"{where}: {kind} value has {len(value)} characters, expected {expected} hex digits")
    if not _HEX.match(value):
        raise BlocklistError(f"{where}: {kind} value is not hexadecimal (expected {expected} hex digits 0-9a-f)")
    return value


def _category(raw: str | None, where: str) -> str:
    category = (raw or "").strip() or DEFAULT_CATEGORY
    if not _CATEGORY.match(category):
        raise BlocklistError(f"{where}: category {category!r} must be letters, digits, '-', '_' or '.'")
    return category


def _lines(text: str) -> list[tuple[int, str]]:
    """Non-blank lines with comments removed, numbered from 1 as a text editor shows them."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append((number, line))
    return out


def _parse_delimited(text: str, name: str, delimiter: str):
    lines = _lines(text)
    if not lines:
        raise BlocklistError(f"{name}: empty list: expected a header 'kind,value[,category]' and entries")
    number, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
    if header[:2] != ["kind", "value"] or header[2:] not in ([], ["category"]):
        raise BlocklistError(
            f"{name}:{number}: header is {header_line!r}, expected 'kind{delimiter}value[{delimiter}category]'"
        )
    for number, line in lines[1:]:
        cells = next(csv.reader([line], delimiter=delimiter))
        where = f"{name}:{number}"
        if len(cells) != len(header):
            raise BlocklistError(f"{where}: {len(cells)} fields, expected {len(header)} ({', '.join(header)})")
        kind = cells[0].strip().lower()
        yield (
            kind,
            normalize_value(kind, cells[1], where),
            _category(cells[2] if len(cells) > 2 else None, where),
        )


def _parse_txt(text: str, name: str, kind: str):
    if kind not in KINDS:
        raise BlocklistError(f"{name}: file name must be <kind>.txt with kind one of {', '.join(KINDS)}")
    for number, line in _lines(text):
        yield kind, normalize_value(kind, line, f"{name}:{number}"), DEFAULT_CATEGORY


def _parse_parquet(data: bytes, name: str):
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise BlocklistError(f"{name}: not a readable parquet file ({error})") from None
    missing = {"kind", "value"} - set(table.column_names)
    if missing:
        raise BlocklistError(
            f"{name}: missing column(s) {', '.join(sorted(missing))}: expected kind, value[, category]"
        )
    kinds = table.column("kind").to_pylist()
    values = table.column("value").to_pylist()
    categories = table.column("category").to_pylist() if "category" in table.column_names else [None] * len(kinds)
    for row, (kind, value, category) in enumerate(zip(kinds, values, categories, strict=True)):
        where = f"{name}: row {row}"
        kind = (kind or "").strip().lower()
        yield kind, normalize_value(kind, value or "", where), _category(category, where)


def _parse_file(name: str, data: bytes):
    lower = name.lower()
    if lower.endswith(".parquet"):
        return _parse_parquet(data, name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BlocklistError(f"{name}: not UTF-8 text (byte {error.start})") from None
    if lower.endswith(".csv"):
        return _parse_delimited(text, name, ",")
    if lower.endswith(".tsv"):
        return _parse_delimited(text, name, "\t")
    if lower.endswith(".txt"):
        base = name.rsplit("/", 1)[-1]
        return _parse_txt(text, name, base[: -len(".txt")].lower())
    raise BlocklistError(f"{name}: unsupported list file: expected .csv, .tsv, .txt or .parquet")


def load(location: str) -> Blocklist:
    """Read every partner list under `location` (one folder per source) into one merged, versioned list."""
    with storage.reaching(location):
        return _load(location)


def _load(location: str) -> Blocklist:
    fs, root = storage.filesystem(location)
    if not fs.isdir(root):
        raise BlocklistError(f"{location}: blocklist location does not exist or is not a folder")
    rows: set[tuple[str, str, str, str]] = set()
    sources = []
    for source_dir in sorted(fs.ls(root, detail=False)):
        source = source_dir.rstrip("/").rsplit("/", 1)[-1]
        if source.startswith(".") or not fs.isdir(source_dir):
            continue
        files = sorted(f for f in fs.find(source_dir) if not f.rsplit("/", 1)[-1].startswith("."))
        if not files:
            raise BlocklistError(f"{location}/{source}: source folder has no list files")
        sources.append(source)
        for path in files:
            name = f"{source}/{path[len(source_dir.rstrip('/')) + 1 :]}"
            parsed = 0
            for kind, value, category in _parse_file(name, fs.cat_file(path)):
                rows.add((kind, value, source, category))
                parsed += 1
            if parsed == 0:
                raise BlocklistError(f"{name}: list file has no entries")
    if not sources:
        raise BlocklistError(f"{location}: no source folders: expected one folder per partner holding list files")
    return _merge(sorted(rows), sources)


def _merge(rows: list[tuple[str, str, str, str]], sources: list[str]) -> Blocklist:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\t".join(row) + "\n").encode())
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    table = pa.table([pa.array(c, pa.string()) for c in columns], schema=SCHEMA)
    counts: dict[str, Counter] = {s: Counter() for s in sources}
    for kind, _value, source, _category in rows:
        counts[source][kind] += 1
    return Blocklist(
        table=table,
        version=digest.hexdigest()[:16],
        sources=sources,
        counts={s: dict(sorted(c.items())) for s, c in counts.items()},
    )


def fingerprint(location: str) -> str:
    """A digest of the names, sizes and modification times of every list file: cheap change detection."""
    fs, root = storage.filesystem(location)
    if not fs.isdir(root):
        return ""
    digest = hashlib.sha256()
    for path, info in sorted(fs.find(root, detail=True).items()):
        modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        digest.update(f"{path}\t{info.get('size')}\t{modified}\n".encode())
    return digest.hexdigest()


def write(blocklist: Blocklist, directory: str, lists_fingerprint: str = "") -> str:
    """Write the merged list as `<directory>/blocklist-<version>.parquet` and point `current.json` at it."""
    path = f"{directory.rstrip('/')}/blocklist-{blocklist.version}.parquet"
    storage.write_parquet_atomic(blocklist.table, path)
    pointer = {
        "version": blocklist.version,
        "path": path.rsplit("/", 1)[-1],
        "entries": blocklist.entries,
        "sources": blocklist.sources,
        "counts": blocklist.counts,
        "lists_fingerprint": lists_fingerprint,
    }
    storage.write_text_atomic(json.dumps(pointer, indent=2, sort_keys=True), f"{directory.rstrip('/')}/current.json")
    return path


def read_pointer(directory: str) -> dict | None:
    """What `current.json` says (version, entries, sources, fingerprint of the lists), or None before the first build."""
    path = f"{directory.rstrip('/')}/current.json"
    return storage.read_json(path) if storage.exists(path) else None


def read_current(directory: str) -> tuple[str, str]:
    """Version and path of the list the blocklist stage wrote last."""
    fs, root = storage.filesystem(directory)
    pointer_path = f"{root.rstrip('/')}/current.json"
    if not fs.exists(pointer_path):
        raise BlocklistError(f"{directory}: no merged blocklist yet: materialize the 'blocklist' asset first")
    pointer = json.loads(fs.cat_file(pointer_path))
    return pointer["version"], f"{directory.rstrip('/')}/{pointer['path']}"
