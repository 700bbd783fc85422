"""Shards: discovery under an input location, and what the pipeline needs to know about each one.

A shard is one parquet file; its name is its path relative to the shard location without `.parquet`
(`laion2B-en/part-00007`), which is also its Dagster partition key and the name of every output made from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from relaion_pipeline import schemas, storage

SUFFIX = ".parquet"


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
    """Every `*.parquet` below `location`, sorted by name; hidden files and folders are skipped."""
    fs, root = storage.filesystem(location)
    with storage.reaching(location):
        if not fs.isdir(root):
            raise ShardError(f"{location}: shard location does not exist or is not a folder")
        paths = fs.find(root.rstrip("/"))
    root = root.rstrip("/")
    found = []
    for path in paths:
        relative = path[len(root) + 1 :]
        if not relative.endswith(SUFFIX) or any(part.startswith(".") for part in relative.split("/")):
            continue
        found.append(Shard(name=relative[: -len(SUFFIX)], path=storage.join(location, relative)))
    return sorted(found, key=lambda s: s.name)


def resolve(location: str, name: str) -> Shard:
    """The shard called `name` under `location`; rejects names that escape the location."""
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ShardError(f"{name!r}: not a shard name (expected a relative path such as 'part-00000')")
    return Shard(name=name, path=storage.join(location, name + SUFFIX))


def open_parquet(shard_path: str) -> pq.ParquetFile:
    """Open a shard for reading, with an error that names the file when it is not readable parquet."""
    fs, path = storage.filesystem(shard_path)
    if not fs.exists(path):
        raise ShardError(f"{shard_path}: shard file does not exist")
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise ShardError(f"{shard_path}: not a readable parquet file ({type(error).__name__}: {error})") from None


def roles(shard: Shard) -> schemas.Roles:
    """Detect the shard's schema family and check the types of the columns the pipeline reads."""
    schema = open_parquet(shard.path).schema_arrow
    found = schemas.detect(schema, shard.path)
    schemas.check_types(schema, found, shard.path)
    return found
