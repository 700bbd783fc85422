"""Partner lists: parse, validate, merge and version the hash lists sent by child-protection partners.

Layout: one folder per source under the blocklist location; inside it, CSV/TSV files with a header
`kind,value[,category]`, `<kind>.txt` files with one value per line, or parquet files with those columns.
`#` starts a comment. An optional `source.json` sets the source's PDQ match distance (`{"pdq_distance": 31}`,
the default), which every `pdq` entry of the source carries in the merged list. The merged list is versioned
by the sha256 of its normalized, sorted content, so the same entries always give the same version whatever
the file layout or order. Files are validated column-wise with pyarrow, so a list of millions of entries loads
in seconds; the first bad entry fails with its file and line.

Memory does not grow with the lists: each file is parsed CHUNK_LINES lines at a time and put aside as parquet
in a scratch folder, DuckDB sorts all of them without duplicates within its memory limit (spilling beyond it),
and the version is digested while the sorted entries are written, a batch at a time. A file's own text is
still read whole (twice its size: bytes and text).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relaion_pipeline.canonical import urls
from relaion_pipeline.core import db, schemas, storage
from relaion_pipeline.core.schemas import sql_string
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import DOMAIN, NAMES, NEAR, by_name

KINDS = NAMES  # declared in relaion_pipeline.lists.kinds, with their value format and how they are matched
SOURCE_CONFIG = "source.json"
DEFAULT_CATEGORY = "unspecified"
SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("value", pa.string()),
        ("source", pa.string()),
        ("category", pa.string()),
        ("distance", pa.int16()),  # the source's match distance for pdq entries, null for the other kinds
    ]
)

_HEX = re.compile(r"^[0-9a-f]+$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
_CATEGORY = re.compile(r"^[A-Za-z0-9_.\-]+$")
DIGEST_ROWS = 262_144  # merged entries digested and written at a time
CHUNK_LINES = 262_144  # lines of a list file parsed at a time: memory follows this, not the file
READ_BYTES = 8 << 20  # bytes of a list file read at a time: a file is never held whole
_OTHER_LINE_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() also breaks lines at these and a lone "\r"


class BlocklistError(ValueError):
    """A partner list that cannot be used; the message names the file and line."""


@dataclass
class Blocklist:
    """The merged list, sorted and without duplicates, in a local parquet file of its own (`path`, removed with
    the object), plus its version and counts: its entries are never all held in memory at once."""

    path: str
    version: str
    sources: list[str]
    entries: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> kind -> entries
    categories: dict[str, int] = field(default_factory=dict)  # category -> entries
    _scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False, compare=False)

    @property
    def table(self) -> pa.Table:
        """Every entry (kind, value, source, category, distance), read from the file: for small lists."""
        return pq.read_table(self.path)

    @property
    def kinds(self) -> dict[str, int]:
        """Entries per kind, over all sources."""
        totals: dict[str, int] = {}
        for by_kind in self.counts.values():
            for kind, n in by_kind.items():
                totals[kind] = totals.get(kind, 0) + n
        return dict(sorted(totals.items()))


def normalize_value(kind: str, raw: str, where: str) -> str:
    """Validate one value of a kind and return its normalized form; `where` is `file:line` for errors."""
    if kind not in KINDS:
        raise BlocklistError(f"{where}: unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    value = raw.strip().lower()
    expected = by_name(kind).hex_digits
    if expected is None:  # a host name (DOMAIN)
        try:
            value = urls.idna_domain(value.rstrip("."))
        except ValueError:
            raise BlocklistError(
                f"{where}: {kind} value has a character that IDNA (UTS #46) does not allow in a host name"
                " (expected e.g. 'example.com' or 'köln.example')"
            ) from None
        labels = value.split(".")
        if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            raise BlocklistError(
                f"{where}: {kind} value is not a plain host name with at least two labels"
                " (expected e.g. 'example.com' or 'köln.example', no scheme, path or port)"
            )
        return value
    if len(value.split()) > 1:
        raise BlocklistError(f"{where}: {kind} value contains whitespace, expected one value of {expected} hex digits")
    if len(value) != expected:
        raise BlocklistError(f"{where}: {kind} value has {len(value)} characters, expected {expected} hex digits")
    if not _HEX.fullmatch(value):
        raise BlocklistError(f"{where}: {kind} value is not hexadecimal (expected {expected} hex digits 0-9a-f)")
    return value


def _category(raw: str | None, where: str) -> str:
    category = (raw or "").strip() or DEFAULT_CATEGORY
    if not _CATEGORY.fullmatch(category):
        raise BlocklistError(f"{where}: category {category!r} must be letters, digits, '-', '_' or '.'")
    return category


def _first_false(mask: pa.Array | pa.ChunkedArray) -> int | None:
    """Position of the first false (or null) value of a boolean array, None when all are true."""
    flags = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~flags)
    return int(bad[0]) if bad.size else None


def _pattern(kind: str) -> str:
    """RE2 pattern of a valid, normalized value of `kind`."""
    return by_name(kind).pattern


def _idna_domains(kinds: pa.Array, values: pa.Array) -> pa.Array:
    """`values` with each domain value written in Unicode (`köln.example`) in its IDNA form
    (`xn--kln-sna.example`), the form a row's non-ASCII host is matched in as well as its own (`urls.host_forms`),
    so that an entry matches the same rows whether its partner wrote it in Unicode or in punycode. A value that
    does not convert is left as it is, for validation to name."""
    unicode = pc.fill_null(pc.and_(pc.equal(kinds, DOMAIN.name), pc.invert(pc.string_is_ascii(values))), False)
    if not pc.any(unicode).as_py():
        return values

    def converted(value: str) -> str:
        try:
            return urls.idna_domain(value)
        except ValueError:
            return value

    replacements = pa.array([converted(v) for v in pc.filter(values, unicode).to_pylist()], pa.string())
    return pc.replace_with_mask(values, unicode, replacements)


def _validated(kinds: pa.Array, values: pa.Array, categories: pa.Array | None, where) -> pa.Table:
    """Normalize and validate a file's entries at once; the first bad one fails with `where(position)`.

    Vectorized, so lists of millions of entries load in seconds; the error for a bad entry comes from
    `normalize_value` and `_category`, which state the rules one value at a time.
    """
    raw_kinds, raw_values, raw_categories = kinds, values, categories
    kinds = pc.ascii_lower(pc.utf8_trim_whitespace(pc.fill_null(kinds.cast(pa.string()), "")))
    values = pc.ascii_lower(pc.utf8_trim_whitespace(pc.fill_null(values.cast(pa.string()), "")))
    if categories is None:
        categories = pa.nulls(len(kinds), pa.string())
    categories = pc.utf8_trim_whitespace(pc.fill_null(categories.cast(pa.string()), ""))
    categories = pc.if_else(pc.equal(categories, ""), DEFAULT_CATEGORY, categories)
    present = pc.unique(kinds).to_pylist()
    if DOMAIN.name in present:
        values = pc.if_else(pc.equal(kinds, DOMAIN.name), pc.utf8_rtrim(values, characters="."), values)
        values = _idna_domains(kinds, values)
    known = [kind for kind in present if kind in KINDS]
    if len(present) == 1 and known:
        ok = pc.match_substring_regex(values, _pattern(known[0]))
    else:  # null (an unknown kind) counts as invalid
        ok = pa.nulls(len(kinds), pa.bool_())
        for kind in known:
            ok = pc.if_else(pc.equal(kinds, kind), pc.match_substring_regex(values, _pattern(kind)), ok)
    bad_categories = [c for c in pc.unique(categories).to_pylist() if not _CATEGORY.fullmatch(c)]
    if bad_categories:
        ok = pc.and_(ok, pc.invert(pc.is_in(categories, pa.array(bad_categories, pa.string()))))
    bad = _first_false(ok)
    if bad is not None:
        where_bad = where(bad)
        normalize_value(kinds[bad].as_py(), raw_values[bad].as_py() or "", where_bad)
        _category(raw_categories[bad].as_py() if raw_categories is not None else None, where_bad)
        # the two functions above state the same rules one value at a time and have raised: a safety net only
        raise BlocklistError(f"{where_bad}: {raw_kinds[bad].as_py()} entry is not valid")
    return pa.table({"kind": kinds, "value": values, "category": categories})


def _plain_line_ends(text: str) -> bool:
    """Whether lines end in "\n" or "\r\n" only (else Python's splitlines() decides where they end)."""
    return text.count("\r") == text.count("\r\n") and not any(c in text for c in _OTHER_LINE_BREAKS)


def _text_chunks(text: str, lines: int | None = None):
    """(number of the first line, text) of consecutive pieces of `text` of `lines` lines each (by default
    CHUNK_LINES), cut after a "\n"; the whole text at once when it has other line ends."""
    lines = lines or CHUNK_LINES
    if not _plain_line_ends(text):
        yield 1, text
        return
    start, first = 0, 1
    while start < len(text):
        end = start
        for _ in range(lines):
            end = text.find("\n", end) + 1
            if end == 0:
                end = len(text)
                break
        yield first, text[start:end]
        first += lines
        start = end


def _text_pieces(handle, name: str):
    """(number of the first line, text) of consecutive pieces of the UTF-8 list file open as `handle` (a
    leading BOM dropped): READ_BYTES are read at a time, cut after their last "\n" and then into pieces of
    CHUNK_LINES lines (`_text_chunks`), so that the file is never held whole. Lines are numbered as a text
    editor shows them, whatever the line ends. Bytes that are not UTF-8 fail naming the line and the byte."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    fed = newlines = 0  # bytes given to the decoder so far, and the "\n" among them
    first, rest = 1, ""
    while True:
        data = handle.read(READ_BYTES)
        final = not data
        try:
            text = rest + decoder.decode(data, final=final)
        except UnicodeDecodeError as error:
            # the error's bytes end where `data` ends (they begin with any bytes held back from the read before)
            offset = fed + len(data) - len(error.object) + error.start
            line = newlines + error.object[: error.start].count(b"\n") + 1
            raise BlocklistError(
                f"{name}:{line}: not UTF-8 text (byte {offset} of the file is {error.object[error.start]:#04x}):"
                " expected the list saved as UTF-8"
            ) from None
        fed, newlines = fed + len(data), newlines + data.count(b"\n")
        cut = len(text) if final else text.rfind("\n") + 1
        whole, rest = text[:cut], text[cut:]
        for number, piece in _text_chunks(whole):
            yield first + number - 1, piece
        first += whole.count("\n") if _plain_line_ends(whole) else len(whole.splitlines())
        if final:
            return


def _text_lines(text: str, first: int = 1) -> tuple[np.ndarray, pa.Array]:
    """Line numbers (from `first`, as a text editor shows them) and contents of the non-blank lines, comments
    removed."""
    if not _plain_line_ends(text):
        lines = pa.array(text.splitlines(), pa.string())
    else:  # "\n" or "\r\n" line ends (the "\r" is trimmed below): split without making a Python string per line
        lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten().cast(pa.string())
    if "#" in text:
        lines = pc.replace_substring_regex(lines, pattern="#.*", replacement="")
    content = pc.utf8_trim_whitespace(lines)
    keep = pc.not_equal(pc.utf8_length(content), 0)
    numbers = np.flatnonzero(keep.to_numpy(zero_copy_only=False)) + first
    return numbers, content.filter(keep)


def _parse_delimited(pieces, name: str, delimiter: str):
    """The entries of a CSV or TSV list, from its `_text_pieces`."""
    header = None
    for first, chunk in pieces:
        numbers, lines = _text_lines(chunk, first)
        if header is None:
            if not len(lines):
                continue  # blank lines and comments before the header
            header_line = lines[0].as_py()
            header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
            if header[:2] != ["kind", "value"] or header[2:] not in ([], ["category"]):
                raise BlocklistError(
                    f"{name}:{numbers[0]}: header is {header_line!r}, expected"
                    f" 'kind{delimiter}value[{delimiter}category]'"
                )
            numbers, lines = numbers[1:], lines[1:]
        if pc.any(pc.match_substring(lines, '"')).as_py():  # quoted fields: the csv module splits them
            cells = pa.array([next(csv.reader([line], delimiter=delimiter)) for line in lines.to_pylist()])
        else:
            cells = pc.split_pattern(lines, delimiter)
        fields = pc.list_value_length(cells)
        wrong = _first_false(pc.equal(fields, len(header)))
        valid_rows = len(lines) if wrong is None else wrong
        rows = cells[:valid_rows]
        yield _validated(
            pc.list_element(rows, 0),
            pc.list_element(rows, 1),
            pc.list_element(rows, 2) if len(header) > 2 else None,
            lambda i, numbers=numbers: f"{name}:{numbers[i]}",
        )
        if wrong is not None:
            raise BlocklistError(
                f"{name}:{numbers[wrong]}: {fields[wrong].as_py()} fields, expected {len(header)} ({', '.join(header)})"
            )
    if header is None:
        raise BlocklistError(f"{name}: empty list: expected a header 'kind,value[,category]' and entries")


def _parse_txt(pieces, name: str, kind: str):
    """The entries of a `<kind>.txt` list, from its `_text_pieces`."""
    if kind not in KINDS:
        raise BlocklistError(f"{name}: file name must be <kind>.txt with kind one of {', '.join(KINDS)}")
    for first, chunk in pieces:
        numbers, lines = _text_lines(chunk, first)
        kinds = pa.array([kind] * len(lines), pa.string())
        yield _validated(kinds, lines, None, lambda i, numbers=numbers: f"{name}:{numbers[i]}")


def _parse_parquet(handle, name: str):
    """The entries of the parquet list open as `handle`, CHUNK_LINES rows at a time."""
    try:
        file = pq.ParquetFile(handle)
        schema = file.schema_arrow
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise BlocklistError(f"{name}: not a readable parquet file ({error})") from None
    missing = {"kind", "value"} - set(schema.names)
    if missing:
        raise BlocklistError(
            f"{name}: missing column(s) {', '.join(sorted(missing))}: expected kind, value[, category]"
        )
    for column in ("kind", "value", "category"):
        if schema.names.count(column) > 1:
            raise BlocklistError(
                f"{name}: column {column!r} appears {schema.names.count(column)} times; expected it once"
            )
        if column in schema.names and not _is_text(schema.field(column).type):
            found = schema.field(column).type
            raise BlocklistError(f"{name}: column {column!r} must hold strings, found {found}")
    columns = [c for c in ("kind", "value", "category") if c in schema.names]
    batches = file.iter_batches(batch_size=CHUNK_LINES, columns=columns)
    first = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as error:  # a damaged page
            raise BlocklistError(f"{name}: not a readable parquet file ({error})") from None
        if batch is None:
            return
        batch = pa.RecordBatch.from_arrays([_decoded(c) for c in batch.columns], names=batch.schema.names)
        yield _validated(
            batch.column("kind"),
            batch.column("value"),
            batch.column("category") if "category" in columns else None,
            lambda row, first=first: f"{name}: row {first + row}",
        )
        first += batch.num_rows


def _is_text(kind: pa.DataType) -> bool:
    return schemas.is_text(kind) or pa.types.is_null(kind)


def _decoded(column: pa.Array) -> pa.Array:
    """A dictionary-encoded column (valid strings, as pandas categoricals are written) as plain strings."""
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _parse_file(name: str, handle):
    """The entries of the list file open as `handle` (binary, seekable), validated and normalized, as tables
    of up to CHUNK_LINES entries."""
    lower = name.lower()
    if lower.endswith(".parquet"):
        return _parse_parquet(handle, name)
    if lower.endswith(".csv"):
        return _parse_delimited(_text_pieces(handle, name), name, ",")
    if lower.endswith(".tsv"):
        return _parse_delimited(_text_pieces(handle, name), name, "\t")
    if lower.endswith(".txt"):
        base = name.rsplit("/", 1)[-1]
        return _parse_txt(_text_pieces(handle, name), name, base[: -len(".txt")].lower())
    raise BlocklistError(f"{name}: unsupported list file: expected .csv, .tsv, .txt or .parquet")


def load(location: str, settings: Settings | None = None) -> Blocklist:
    """Read every partner list under `location` (one folder per source) into one merged, versioned list.

    Each file is parsed and validated alone and put aside as parquet; DuckDB then sorts all of them without
    duplicates within its memory limit (spilling beyond it), so memory follows the largest file and the limit,
    not the lists' total (`settings` gives the limit; by default the pipeline's)."""
    scratch = tempfile.TemporaryDirectory(prefix="relaion-blocklist-")
    try:
        with storage.reaching(location):
            sources = _load(location, scratch.name)
        return _merge(scratch, sources, settings)
    except BaseException:
        scratch.cleanup()
        raise


def _load(location: str, scratch: str) -> list[str]:
    """Parse every list file under `location` into `scratch` (part-NNNNN.parquet, in SCHEMA); the sources."""
    fs, root = storage.filesystem(location)
    if not fs.isdir(root):
        raise BlocklistError(f"{location}: blocklist location does not exist or is not a folder")
    parts = 0
    sources = []
    for source_dir in sorted(fs.ls(root, detail=False)):
        source = source_dir.rstrip("/").rsplit("/", 1)[-1]
        if source.startswith(".") or not fs.isdir(source_dir):
            continue
        files = sorted(f for f in fs.find(source_dir) if not f.rsplit("/", 1)[-1].startswith("."))
        config_path = f"{source_dir.rstrip('/')}/{SOURCE_CONFIG}"
        distance = (
            _source_distance(f"{source}/{SOURCE_CONFIG}", fs.cat_file(config_path)) if config_path in files else None
        )
        files = [f for f in files if f != config_path]
        if not files:
            raise BlocklistError(f"{location}/{source}: source folder has no list files")
        sources.append(source)
        for path in files:
            name = f"{source}/{path[len(source_dir.rstrip('/')) + 1 :]}"
            limit = pa.scalar(pdq.DEFAULT_DISTANCE if distance is None else distance, pa.int16())
            found = 0
            part_path = os.path.join(scratch, f"part-{parts:05d}.parquet")
            with fs.open(path, "rb") as handle, pq.ParquetWriter(part_path, SCHEMA) as part:
                for entries in _parse_file(name, handle):
                    found += entries.num_rows
                    entries = entries.add_column(2, "source", pa.array([source] * entries.num_rows, pa.string()))
                    near = pc.is_in(entries.column("kind"), pa.array(NEAR))
                    entries = entries.append_column("distance", pc.if_else(near, limit, None).cast(pa.int16()))
                    part.write_table(entries.select(SCHEMA.names).cast(SCHEMA))
            if found == 0:
                raise BlocklistError(f"{name}: list file has no entries")
            parts += 1
    if not sources:
        raise BlocklistError(f"{location}: no source folders: expected one folder per partner holding list files")
    return sources


def _once(pairs: list[tuple]) -> dict:
    """A JSON object whose keys are all distinct (json's default keeps the last of a repeated key silently)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise KeyError(key)
        seen[key] = value
    return seen


def _source_distance(name: str, data: bytes) -> int:
    """The PDQ match distance a source's `source.json` sets."""
    try:
        config = json.loads(data.decode("utf-8-sig"), object_pairs_hook=_once)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BlocklistError(f'{name}: not valid JSON ({error}): expected e.g. {{"pdq_distance": 31}}') from None
    except KeyError as error:  # which of two values was meant cannot be known: fail, never pick one
        raise BlocklistError(f"{name}: setting {error.args[0]} given twice: expected each setting once") from None
    unknown = set(config) - {"pdq_distance"} if isinstance(config, dict) else {"(not an object)"}
    if unknown:
        raise BlocklistError(f"{name}: unknown setting(s) {', '.join(sorted(unknown))}: expected only pdq_distance")
    distance = config.get("pdq_distance", pdq.DEFAULT_DISTANCE)
    if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= pdq.MAX_DISTANCE:
        raise BlocklistError(
            f"{name}: pdq_distance is {distance!r}, expected a whole number of bits from 0 to {pdq.MAX_DISTANCE}"
        )
    return distance


def _lines_digest(batches):
    """sha256 of the lines of the entries in `batches` (record batches in SCHEMA), each `kind, value, source,
    category` and, for pdq entries, the distance, joined by tabs and followed by a newline: fed from Arrow's
    buffers a batch at a time (a Python string per line would take ~10x the list's size)."""
    digest = hashlib.sha256()
    for batch in batches:
        distance = batch.column("distance").cast(pa.string())  # null where it is no pdq entry: skipped
        lines = pc.binary_join_element_wise(
            *(batch.column(n) for n in SCHEMA.names[:4]), distance, "\t", null_handling="skip"
        )
        block = pc.binary_join_element_wise(lines, "", "\n").cast(pa.large_string())
        offsets = np.frombuffer(block.buffers()[1], dtype=np.int64)[block.offset : block.offset + len(block) + 1]
        if len(block):
            digest.update(memoryview(block.buffers()[2])[offsets[0] : offsets[-1]])
    return digest


def _merge(scratch: tempfile.TemporaryDirectory, sources: list[str], settings: Settings | None) -> Blocklist:
    """Distinct entries sorted by (kind, value, source, category, distance) into `scratch`/merged.parquet; the
    version digests their lines in that order (byte order, as Arrow's sort gave it before), in batches."""
    names = ", ".join(SCHEMA.names)
    written = sorted(os.path.join(scratch.name, f) for f in os.listdir(scratch.name) if f.startswith("part-"))
    parts = "[" + ", ".join(storage.duckdb_path(p) for p in written) + "]"
    ordered = os.path.join(scratch.name, "sorted.parquet")
    con = db.connect(settings)
    try:
        con.execute(
            f"COPY (SELECT DISTINCT {names} FROM read_parquet({parts}) ORDER BY {names}) TO {sql_string(ordered)}"
            " (FORMAT parquet, COMPRESSION zstd)"
        )
        grouped = con.execute(  # entries per source and kind, and per category, in one pass
            f"SELECT grouping(category) = 1, source, kind, category, count(*) FROM read_parquet({storage.duckdb_path(ordered)})"
            " GROUP BY GROUPING SETS ((source, kind), (category)) ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    for part in written:
        os.remove(part)
    merged = os.path.join(scratch.name, "merged.parquet")
    entries = 0

    def batches():  # DuckDB's order, in the list's own schema (DuckDB marks the columns it saw no null in)
        nonlocal entries
        with pq.ParquetWriter(merged, SCHEMA, compression=storage.PARQUET_COMPRESSION) as writer:
            for batch in pq.ParquetFile(ordered).iter_batches(batch_size=DIGEST_ROWS):
                batch = batch.cast(SCHEMA)
                writer.write_batch(batch)
                entries += batch.num_rows
                yield batch

    digest = _lines_digest(batches())
    os.remove(ordered)
    counts: dict[str, dict[str, int]] = {s: {} for s in sources}
    by_category = {}
    for by_source, source, kind, category, n in grouped:
        if by_source:
            counts[source][kind] = n
        else:
            by_category[category] = n
    return Blocklist(
        path=merged,
        version=digest.hexdigest()[:16],
        sources=sources,
        entries=entries,
        counts=counts,
        categories=by_category,
        _scratch=scratch,
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
    storage.copy(blocklist.path, path)
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
