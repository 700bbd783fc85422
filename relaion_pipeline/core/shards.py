"""Shards: discovery under an input location, and what the pipeline needs to know about each one.

A shard is one parquet file; its name is its path relative to the shard location without `.parquet`
(`laion2B-en/part-00007`), which is also its Dagster partition key and the name of every output made from it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core import schemas, storage

SUFFIX = ".parquet"
MAGIC = b"PAR1"  # first and last four bytes of every parquet file
_READ_ERRORS = (duckdb.IOException, duckdb.InvalidInputException)
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")  # quoted text in a reader's message: possibly a row's value


class ShardError(ValueError):
    """A shard that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Shard:
    name: str  # relative path without .parquet
    path: str  # full local path or URL

    @property
    def file_name(self) -> str:
        return self.name + SUFFIX


def discover(location: str) -> list[Shard]:
    """Every `*.parquet` below `location`, sorted by name; hidden files and folders are skipped. Locally,
    symbolic links to folders are followed (a shard location is often assembled from links); a link back to
    a folder above it fails, naming it, instead of looping."""
    fs, root = storage.filesystem(location)
    with storage.reaching(location):
        if not fs.isdir(root):
            raise ShardError(f"{location}: shard location does not exist or is not a folder")
        root = root.rstrip("/")
        relatives = _local_files(root) if storage.is_local(location) else [p[len(root) + 1 :] for p in fs.find(root)]
    found = []
    for relative in relatives:
        if not relative.endswith(SUFFIX) or any(part.startswith(".") for part in relative.split("/")):
            continue
        found.append(Shard(name=relative[: -len(SUFFIX)], path=storage.join(location, relative)))
    return sorted(found, key=lambda s: s.name)


def _local_files(root: str) -> list[str]:
    """Paths relative to the local folder `root` of every file below it, through symbolic links to folders
    (fsspec's `find` lists such a link as a file and never looks inside). Hidden entries are not entered."""
    found: list[str] = []

    def walk(folder: str, relative: str, above: frozenset) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if not entry.is_dir():  # a file, a link to one, or a broken link (which fails when read, named)
                    found.append(relative + entry.name)
                    continue
                status = os.stat(entry.path)
                identity = (status.st_dev, status.st_ino)
                if identity in above:
                    raise ShardError(
                        f"{entry.path}: a symbolic link to a folder above it under the shard location (a loop);"
                        " expected links to folders outside their own path: remove or replace it"
                    )
                walk(entry.path, f"{relative}{entry.name}/", above | {identity})

    status = os.stat(root)
    walk(root, "", frozenset({(status.st_dev, status.st_ino)}))
    return found


def resolve(location: str, name: str) -> Shard:
    """The shard called `name` under `location`; rejects names that escape the location."""
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ShardError(
            f"{name!r}: not a shard name under {location}: expected a relative path without '.', '..' or empty"
            " parts, such as 'part-00000'"
        )
    return Shard(name=name, path=storage.join(location, name + SUFFIX))


STREAM_BUFFER = 4 << 20  # bytes per column reader when streaming


def open_parquet(shard_path: str, streaming: bool = False) -> pq.ParquetFile:
    """Open a shard for reading, with an error that names the file when it is not readable parquet.

    `streaming` is for reading it batch by batch: column chunks are read through small buffers instead of
    being pre-buffered whole, which keeps memory flat on large shards (pyarrow's pre-buffering grew to 1.3 GB
    over an 18M-row shard, 250 MB without it)."""
    fs, path = storage.filesystem(shard_path)
    if not fs.exists(path):
        raise ShardError(f"{shard_path}: shard file does not exist")
    if fs.isdir(path):
        raise ShardError(f"{shard_path}: is a folder, expected a parquet file")
    try:
        options = {"pre_buffer": False, "buffer_size": STREAM_BUFFER} if streaming else {}
        return pq.ParquetFile(fs.open(path, "rb"), **options)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ShardError(f"{shard_path}: not a readable parquet file: {_diagnose(fs, path, error)}") from None


def _diagnose(fs, path: str, error: Exception) -> str:
    """Why a file is not parquet, from its first and last bytes (a parquet file starts and ends with PAR1)."""
    size = fs.size(path)
    if not size:
        return "the file is empty (0 bytes)"
    with fs.open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if head != MAGIC:
        return f"expected a parquet file starting with {MAGIC.decode()}, found other content"
    if tail != MAGIC:
        return f"the file starts as parquet but does not end with {MAGIC.decode()} (truncated, or still being written)"
    return f"{type(error).__name__}: {error}"


def unreadable(error: Exception, *paths: str | None) -> Exception:
    """What to raise when DuckDB fails on a query over `paths` (a shard, then maybe its sidecar and list).

    DuckDB quotes the offending value when a string is not valid UTF-8, and that value may be a URL or caption:
    its message is never passed on. pyarrow locates the damage instead (row and column). Errors that are not
    about reading a file (out of memory, a query bug) are returned unchanged.
    """
    message = str(error)
    if storage.no_space(error):  # a write failed (an output, or DuckDB spilling beyond its memory limit)
        return storage.StorageError(
            f"no space left on the device while processing {next((p for p in paths if p), 'a shard')}: free space"
            " under the work location and the temporary folder (TMPDIR, where DuckDB spills) and run again"
        )
    named = [p for p in paths if p and _named_in(p, message)]
    if not named and not (type(error) is duckdb.Error or isinstance(error, _READ_ERRORS)):
        return error
    candidates = named or [p for p in paths if p]
    for path in candidates:
        if (problem := damage(path)) is not None:
            return problem
    path = candidates[0]
    if "Invalid string encoding" in message:
        return ShardError(f"{path}: holds text that is not valid UTF-8, expected UTF-8 strings")
    detail = _QUOTED.sub("…", (message.strip().splitlines() or [""])[0])
    return ShardError(f"{path}: not a readable parquet file: {type(error).__name__}: {detail}")


def _named_in(path: str, message: str) -> bool:
    """Whether DuckDB's message names the file `path`, as a path or as the literal pattern it was given."""
    try:
        pattern = storage.literal_pattern(path)
    except storage.StorageError:  # never given to DuckDB
        pattern = path
    return storage.filesystem(path)[1] in message or pattern in message


def damage(shard_path: str) -> ShardError | None:
    """Where pyarrow finds a file damaged: the first row and column whose text is not valid UTF-8, or the first
    rows it cannot decode; None when every row reads back."""
    parquet = open_parquet(shard_path)
    schema = parquet.schema_arrow
    first = 0
    try:
        for batch in parquet.iter_batches(batch_size=65_536):
            for field, values in zip(schema, batch.columns, strict=True):
                if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                    continue
                try:
                    values.validate(full=True)
                except pa.ArrowInvalid:
                    return ShardError(
                        f"{shard_path}: row {first + _first_invalid_utf8(values)}, column {field.name!r}: text is"
                        " not valid UTF-8, expected UTF-8 strings"
                    )
            first += batch.num_rows
    except (pa.ArrowException, OSError) as error:
        detail = _QUOTED.sub("…", (str(error).strip().splitlines() or [""])[0])
        return ShardError(
            f"{shard_path}: not a readable parquet file: rows from {first} on cannot be read"
            f" ({type(error).__name__}: {detail})"
        )
    return None


def _first_invalid_utf8(values: pa.Array) -> int:
    """Position of the first value that is not UTF-8 in a string array that failed validation."""
    binary = values.view(pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary())
    for position, raw in enumerate(binary.to_pylist()):
        try:
            if raw is not None:
                raw.decode("utf-8")
        except UnicodeDecodeError:
            return position
    return 0


def roles(shard: Shard) -> schemas.Roles:
    """Detect the shard's schema family and check the types of the columns the pipeline reads."""
    schema = open_parquet(shard.path).schema_arrow
    found = schemas.detect(schema, shard.path)
    schemas.check_types(schema, found, shard.path)
    return found
