"""Locations: local paths or fsspec URLs (`s3://` through s3fs), and writes that never show a partial file.

Local writes go to a temporary name in the same folder and are renamed into place; object stores make an
object visible only when its upload completes, so there the final name is written directly.

S3 takes its endpoint, region and credentials from the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, ...).
Listings are never cached, so a file written a moment ago is always seen.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core.schemas import sql_string

PARQUET_COMPRESSION = "zstd"
_MAGIC = re.compile(r"[*?[]")  # what makes DuckDB and fsspec (glob.has_magic) read a path as a pattern
_SPECIAL = re.compile(r"[*?[\]{}]")  # written as one-character classes in a pattern that must match itself


class StorageError(OSError):
    """A location that cannot be reached; the message names it and says what to check."""


@contextmanager
def reaching(location: str):
    """Turn the errors of an unreachable location into one sentence that names it and what to check."""
    try:
        yield
    except ValueError as error:
        if "Invalid endpoint" not in str(error):
            raise
        raise StorageError(
            f"{location}: AWS_ENDPOINT_URL={os.environ.get('AWS_ENDPOINT_URL', '')!r} is not a valid endpoint,"
            " expected a URL such as http://127.0.0.1:9000 or https://s3.example.com"
        ) from None
    except PermissionError as error:
        raise StorageError(
            f"{location}: access denied ({error}); check the credentials (AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and the bucket's permissions"
        ) from None
    except (ConnectionError, TimeoutError) as error:
        raise StorageError(f"{location}: cannot connect ({error}); check AWS_ENDPOINT_URL and the network") from None
    except OSError as error:
        if is_local(location) or isinstance(error, (FileNotFoundError, StorageError)):
            raise
        raise StorageError(
            f"{location}: the storage server kept failing after retries ({error}); check its status and"
            " AWS_ENDPOINT_URL, then run again"
        ) from None
    except Exception as error:  # botocore's, which are no OSError
        if type(error).__name__ not in ("NoCredentialsError", "PartialCredentialsError"):
            raise
        raise StorageError(
            f"{location}: no S3 credentials found ({error}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or"
            " AWS_PROFILE, or give them to the S3Storage resource"
        ) from None


def configure_s3(
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> None:
    """Use these S3 settings instead of the AWS environment variables for every `s3://` location of this
    process (None keeps the environment's). Credentials go to s3fs only; nothing here logs them."""
    options: dict = {}
    client: dict = {}
    if endpoint_url:
        client["endpoint_url"] = endpoint_url
    if region:
        client["region_name"] = region
    if client:
        options["client_kwargs"] = client
    if access_key_id:
        options["key"] = access_key_id
    if secret_access_key:
        options["secret"] = secret_access_key
    if fsspec.config.conf.get("s3") != options:
        fsspec.config.conf["s3"] = options
        fsspec.get_filesystem_class("s3").clear_instance_cache()


def filesystem(location: str):
    """The fsspec filesystem and the path inside it for a local path or URL. The location is taken as one
    name: `fsspec.core.url_to_fs` would read `a::b` in it as a chain of two URLs and give the path `a`."""
    location = str(location)
    if is_local(location):
        fs = fsspec.filesystem("file")
    else:
        fs = fsspec.filesystem(location.split("://", 1)[0], use_listings_cache=False)
    return fs, fs._strip_protocol(location)


def literal_pattern(location: str) -> str:
    """`location` written as a glob pattern that matches exactly that file, for the readers that take every
    path as a pattern (DuckDB's `read_parquet` locally and through fsspec, fsspec's glob): a shard named
    `br[a]cket` must never be read from `bracket` beside it. A path without `*`, `?` or `[` is no pattern to
    them and is returned as it is; otherwise each of `*?[]{}` becomes a one-character class (`[*]`).

    DuckDB splits a local pattern at backslashes too, so a local path holding both a backslash and one of
    `*?[` cannot be read literally at all: it is refused, naming it, rather than read from another file."""
    location = str(location)
    if not _MAGIC.search(location):
        return location
    if "\\" in location and is_local(location):
        raise StorageError(
            f"{location}: DuckDB cannot read a local file whose path holds both a backslash and one of * ? [ as"
            " that file alone; rename it (or its folder) without the backslash or the pattern character"
        )
    return _SPECIAL.sub(lambda found: f"[{found.group()}]", location)


def duckdb_path(location: str) -> str:
    """The SQL string literal to give DuckDB's readers (`read_parquet(...)`) for the file `location` and only
    that file, whatever characters its name holds (quotes included). Never for a `COPY ... TO` target, which
    DuckDB takes literally."""
    return sql_string(literal_pattern(location))


def register(con, *locations: str, unchanging: tuple[str, ...] = ()) -> None:
    """Let a DuckDB connection read the object stores among `locations` through fsspec.

    DuckDB asks the store about a file (a HEAD request) at every reference to it in a query and at every
    thread's open: ~160 times per shard's stages for the merged list alone. Files under the prefixes
    `unchanging` (inputs, which a run never writes, and content-addressed files) are asked about once per
    connection; every other file at every open, so that a file the stage writes is read as it is now.
    Reads of S3 objects also carry the ETag they were opened with (s3fs), so a file that did change would
    fail to read instead of mixing two versions.

    Why not DuckDB's own `httpfs`: it is an extension downloaded at run time (not possible where only the
    package registries are reachable), and it keeps its own credentials and endpoint settings apart from the s3fs
    ones every other read and write here uses: one filesystem, configured once, serves both."""
    registered = set(con.list_filesystems())
    for location in locations:
        if location and not is_local(location):
            fs, _ = filesystem(location)
            protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
            if not protocols & registered:  # DuckDB takes one filesystem per protocol, for the connection's life
                con.register_filesystem(_asked_once(fs, [filesystem(u)[1] for u in unchanging if u]))
                registered |= protocols


def _asked_once(fs, prefixes: list[str]):
    """A new instance of the S3 filesystem `fs` that remembers what `info` said about a file under one of
    `prefixes` (its existence and size included); `fs` itself for any other filesystem, or without prefixes."""
    import s3fs

    if not prefixes or not isinstance(fs, s3fs.S3FileSystem):
        return fs

    class AskedOnce(type(fs)):
        async def _info(self, path, bucket=None, key=None, refresh=False, version_id=None):
            name = self._strip_protocol(path)
            if refresh or version_id is not None or not name.startswith(tuple(prefixes)):
                return await super()._info(path, bucket, key, refresh=refresh, version_id=version_id)
            if name not in self.asked:
                self.asked[name] = await super()._info(path, bucket, key)
            return self.asked[name]

    instance = AskedOnce(**fs.storage_options, skip_instance_cache=True)
    instance.asked = {}
    return instance


def num_rows(location: str) -> int:
    """Rows of a parquet file, from its footer."""
    fs, path = filesystem(location)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def read_table(location: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(location)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    return fs.cat_file(path).decode("utf-8-sig")


def copy(source: str, destination: str, chunk: int = 8 << 20) -> tuple[int, str]:
    """Copy a file between any two locations, streaming; the copy appears complete or not at all. Returns the
    size and sha256 of the bytes written."""
    src_fs, src_path = filesystem(source)
    digest, size = hashlib.sha256(), 0
    with AtomicPath(destination) as tmp:
        dst_fs, dst_path = filesystem(tmp)
        with src_fs.open(src_path, "rb") as reader, dst_fs.open(dst_path, "wb") as writer:
            while block := reader.read(chunk):
                writer.write(block)
                digest.update(block)
                size += len(block)
    return size, digest.hexdigest()


LINKED, SERVER_COPY, STREAMED = "linked", "copied by the server", "streamed"
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


def place(source: str, destination: str) -> tuple[str, tuple[int, str] | None]:
    """Put the bytes of `source` at `destination` (a new name, in a folder not yet visible to readers) without
    moving them where the store allows: a hard link on a local disk, a copy made by the server within an object
    store. Else they are streamed across (`copy`). Returns how, with the size and sha256 of the bytes written
    when they were streamed (None when the store made them: the same bytes as `source`'s, by construction).

    A linked file is made read-only: its bytes are both the published file's and the work file's, and the
    pipeline never writes a file in place (a new version of a work file is a new file renamed over it), so
    an edit in place by anyone else is refused rather than reaching a release (root ignores the mode: the
    digests then tell, and `relaion verify` and the release's check name the file). A server-side copy keeps
    the source's ETag (a digest of the content, per part): the caller compares it with the one it knew."""
    if is_local(source) and is_local(destination):
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)
        except OSError as error:
            if error.errno not in _NO_LINK:  # another disk, or one without hard links: streamed
                raise
        else:
            os.chmod(destination, os.stat(destination).st_mode & ~0o222)
            return LINKED, None
    elif not is_local(source) and not is_local(destination):
        src_fs, src_path = filesystem(source)
        dst_fs, dst_path = filesystem(destination)
        if src_fs is dst_fs:
            src_fs.cp_file(src_path, dst_path, preserve_etag=True)  # one name each: no pattern is expanded
            return SERVER_COPY, None
    return STREAMED, copy(source, destination)


def is_local(location: str) -> bool:
    return "://" not in str(location) or str(location).startswith("file://")


def join(location: str, *parts: str) -> str:
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _local_tmp(path: str) -> str:
    """A new empty file beside `path`, with the permissions an ordinary new file would get."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=str(Path(path).parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


class AtomicPath:
    """A context manager giving a path to write to; on success it appears under `final`, else nothing does."""

    def __init__(self, final: str):
        self.final = str(final)
        self.local = is_local(self.final)
        self.path = _local_tmp(self.final) if self.local else self.final

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.local:
            return
        if exc_type is None:
            try:
                os.replace(self.path, self.final)
                return
            except OSError as error:
                exc = error
        if os.path.exists(self.path):
            os.unlink(self.path)
        if no_space(exc):
            folder = os.path.dirname(os.path.abspath(self.final))
            raise StorageError(
                f"{self.final}: no space left on the device while writing it; free space under {folder}"
                " (or point the location elsewhere) and run again: nothing was written under this name"
            ) from None
        if exc_type is None:
            raise exc


def no_space(error: BaseException | None) -> bool:
    """True for a full disk, whichever library reports it (OSError errno 28, or a DuckDB or Arrow message)."""
    if error is None:
        return False
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)


def write_bytes_atomic(data: bytes, final: str) -> None:
    with AtomicPath(final) as path:
        fs, inner = filesystem(path)
        with fs.open(inner, "wb") as handle:  # not fsspec.open: in write mode it numbers a `*` in the name
            handle.write(data)


def write_text_atomic(text: str, final: str) -> None:
    write_bytes_atomic(text.encode("utf-8"), final)


def write_parquet_atomic(table: pa.Table, final: str) -> None:
    with AtomicPath(final) as path:
        fs, inner = filesystem(path)
        pq.write_table(table, inner, filesystem=fs, compression=PARQUET_COMPRESSION)


def move(source: str, destination: str) -> None:
    """Give the file `source` the name `destination` (same file system): a rename where the files are local;
    on S3 a server-side copy (the object appears complete) and then the source's deletion. Neither name is
    read as a pattern (fsspec's `mv` and `rm` would glob one holding `*?[`)."""
    if is_local(source) and is_local(destination):
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
        return
    fs, inner = filesystem(source)
    fs.cp_file(inner, filesystem(destination)[1])
    fs.rm_file(inner)


def remove(location: str) -> None:
    """Delete a file, or a folder with everything under it; nothing when it does not exist. The name is never
    read as a pattern: fsspec's `rm` globs one holding `*?[` and would delete its siblings."""
    fs, path = filesystem(location)
    if is_local(location):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    if fs.isdir(path):
        for inner in sorted(fs.find(path), reverse=True):
            fs.rm_file(inner)
    elif fs.exists(path):
        fs.rm_file(path)


def size_and_sha256(location: str, chunk: int = 8 << 20) -> tuple[int, str]:
    """Size in bytes and sha256 hex of a file, read in chunks."""

    fs, path = filesystem(location)
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def read_json(location: str):

    fs, path = filesystem(location)
    return json.loads(fs.cat_file(path))


def write_json_atomic(value, final: str) -> None:

    write_text_atomic(json.dumps(value, indent=2, sort_keys=True) + "\n", final)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.exists(path)


def check_writable(location: str, named: str) -> None:
    """Fail at once, naming `location` and the flag or variable that gave it (`named`), when this process cannot
    write files there (a read-only mount or folder, or a file where a folder should be): before any work, rather
    than with a bare errno after it. Creates the folder; a local location only (an object store says so on
    its first write, through `reaching`)."""
    if not is_local(location):
        return
    path = str(location).removeprefix("file://")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", suffix=".probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        why = "a file is in the way" if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror
        raise StorageError(
            f"{location} ({named}): cannot write there ({why or error}); expected a folder this process may write to"
        ) from None


def inside(path: str, folder: str) -> bool:
    """True when location `path` is `folder` or below it (compared as absolute paths with links resolved, or as
    URLs without a slash at the end)."""

    def norm(location: str) -> str:
        if is_local(location):
            return os.path.realpath(str(location).removeprefix("file://"))
        return str(location).rstrip("/")

    path, folder = norm(path), norm(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")
