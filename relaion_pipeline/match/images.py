"""Image hashes from downloaded shards: md5, sha1, sha256 and PDQ of every image img2dataset fetched, written
as the per-shard sidecars the pipeline matches image-hash lists through.

img2dataset writes, per output shard, `<n>.tar` (webdataset: `<key>.jpg` beside `<key>.json` and `<key>.txt`)
and `<n>.parquet` (key, url, status, ... one row per sample it tried). Its shards do not line up with the
metadata shards, so hashes are joined back by URL: img2dataset records each row's URL as it read it.

1. Per tar, in parallel over all cores: `<out>/.images/<tar>.parquet` holding the sha256 of the URL (never
   the URL itself: some of these rows will be removed), md5, sha1, sha256, pdq and pdq_quality of every image, and `<tar>.json` with the counts (images, corrupt, failed downloads). A tar
   whose result is there for the same input is not hashed again.
2. Per metadata shard: one DuckDB join on the URL writes `<out>/<shard>.parquet`, keyed by the shard's row key,
   atomically. An image that cannot be decoded keeps its byte hashes and has no PDQ hash; it is counted.

Memory stays flat: a tar is read as a stream, one image at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core import cache, interrupts, shards, storage
from relaion_pipeline.core.schemas import quote, sql_string
from relaion_pipeline.core.settings import Settings, available_cpus
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import PDQ, SIDECAR_EXACT, by_name
from relaion_pipeline.lists.kinds import SIDECAR_COLUMNS as HASH_COLUMNS
from relaion_pipeline.match import matching

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
PDQ_MAX_SIDE = 512  # images are scaled down to at most this before PDQ, as the reference hasher advises
HASHES_DIR = ".images"
URL_DIGEST = "url_sha256"  # sha256 of the URL as UTF-8, as downloaded: what the join with the shard's rows uses
HASHES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # img2dataset's sample key
        (URL_DIGEST, pa.string()),
        *((column, pa.string()) for column in HASH_COLUMNS),  # md5, sha1, sha256, pdq: one per image kind
        ("pdq_quality", pa.int16()),
    ]
)
SIDECAR_COLUMNS = ["key", *HASH_COLUMNS, "pdq_quality"]
_EXACT = [by_name(k) for k in SIDECAR_EXACT]  # the byte hashes: md5, sha1 and sha256 of the image file


class ImagesError(ValueError):
    """Downloaded shards that cannot be hashed; the message names the file."""


class Stopped(Exception):
    """A worker left its tar unhashed because the command was interrupted (nothing of it was written)."""


_stop = None  # in a worker process: the Event set when the command is interrupted


def _start_worker(stop) -> None:
    global _stop
    _stop = stop
    interrupts.ignore_in_worker()


def pdq_of(image) -> tuple[str, int]:
    """PDQ hash (ThreatExchange hex) and quality (0-100) of a PIL image."""
    import pdqhash
    from PIL import Image

    picture = image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert("RGB")  # palettes resize badly
    if max(picture.size) > PDQ_MAX_SIDE:  # scaled before converting: full-size pixels are never copied
        scale = PDQ_MAX_SIDE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    bits, quality = pdqhash.compute(np.asarray(picture.convert("RGB")))
    return pdq.hex_of_bits(bits), int(quality)


def hash_image(data: bytes) -> dict:
    """Byte hashes of an image file and, when it decodes, its PDQ hash and quality (else both None)."""
    from PIL import Image

    out = {k.sidecar_column: hashlib.new(k.digest, data).hexdigest() for k in _EXACT}
    out |= {PDQ.sidecar_column: None, "pdq_quality": None}
    try:
        with Image.open(io.BytesIO(data)) as image:
            out[PDQ.sidecar_column], out["pdq_quality"] = pdq_of(image)
    except Exception:  # Pillow raises many types for damaged or unsupported files; the image counts as corrupt
        pass
    return out


@dataclass
class TarResult:
    tar: str
    images: int = 0
    corrupt: int = 0  # bytes present but not a decodable image: byte hashes only
    without_url: int = 0  # no .json with a url beside the image, and none in the shard's parquet
    failed_downloads: int = 0  # samples img2dataset tried and could not fetch (status other than success)
    seconds: float = 0.0
    reused: bool = False
    error: str | None = None  # why the tar could not be read (it is then not hashed at all)


def _samples(handle):
    """(key, {extension: bytes}) per sample of a webdataset tar, read as a stream."""
    key, files = None, {}
    try:
        with tarfile.open(fileobj=handle, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, extension = base.partition(".")
                if not stem or not extension:
                    continue
                sample = f"{folder}/{stem}" if folder else stem
                if sample != key and key is not None:
                    yield key, files
                    files = {}
                key = sample
                files[extension.lower()] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ImagesError(f"not a readable tar file ({error})") from None
    if key is not None:
        yield key, files


def _download_table(tar: str) -> dict[str, tuple[str | None, str | None]]:
    """img2dataset's `<n>.parquet` beside a tar: key -> (url, status); empty when it is not there."""
    path = tar[: -len(".tar")] + ".parquet"
    if not storage.exists(path):
        return {}
    table = storage.read_table(path)
    if "key" not in table.column_names:
        return {}
    keys = table.column("key").cast(pa.string()).to_pylist()
    urls = table.column("url").cast(pa.string()).to_pylist() if "url" in table.column_names else [None] * len(keys)
    status = (
        table.column("status").cast(pa.string()).to_pylist() if "status" in table.column_names else [None] * len(keys)
    )
    return dict(zip(keys, zip(urls, status, strict=True), strict=True))


def hash_tar(tar: str, out: str) -> TarResult:
    """Hash every image of one img2dataset tar into `out` (a parquet file, written atomically)."""
    started = time.perf_counter()
    result = TarResult(tar=tar)
    downloads = _download_table(tar)
    rows: dict[str, list] = {name: [] for name in HASHES_SCHEMA.names}
    seen = set()
    fs, path = storage.filesystem(tar)
    try:
        with fs.open(path, "rb") as handle:
            for key, files in _samples(handle):
                if _stop is not None and _stop.is_set():
                    raise Stopped(tar)
                image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
                if image is None:
                    continue
                sample = key.rsplit("/", 1)[-1]
                seen.add(sample)
                url = None
                if "json" in files:
                    try:
                        url = json.loads(files["json"]).get("url")
                    except (ValueError, AttributeError):
                        url = None
                url = url or downloads.get(sample, (None, None))[0]
                if not url:
                    result.without_url += 1
                    continue
                hashes = hash_image(image)
                result.images += 1
                result.corrupt += hashes[PDQ.sidecar_column] is None
                url_digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
                for name, value in (("key", sample), (URL_DIGEST, url_digest), *hashes.items()):
                    rows[name].append(value)
    except ImagesError as error:
        raise ImagesError(f"{tar}: {error}") from None
    result.failed_downloads = sum(
        1 for key, (_, status) in downloads.items() if key not in seen and status not in (None, "success")
    )
    storage.write_parquet_atomic(pa.table(rows, schema=HASHES_SCHEMA), out)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def check_out(out: str, shard_location: str, images: str) -> None:
    """Refuse a sidecar location that is the shard location or the images location, or inside one: the sidecar
    `<out>/<shard>.parquet` would replace an input shard (or, below it, be read as a shard by the next run), or
    img2dataset's `<n>.parquet` of the same name."""
    for inputs, flag in ((shard_location, "--shards"), (images, "--images")):
        if storage.inside(out, inputs):
            raise ImagesError(
                f"--out {out} is {flag} {inputs} or inside it: the sidecars would overwrite the input files"
                " or be read as input; expected a folder of their own (the input is never modified)"
            )


def discover_tars(images: str) -> list[str]:
    """Every `.tar` under the images location, as relative paths, sorted."""
    fs, root = storage.filesystem(images)
    if not fs.isdir(root):
        raise ImagesError(f"{images}: images location does not exist or is not a folder")
    root = root.rstrip("/")
    found = sorted(p[len(root) + 1 :] for p in fs.find(root) if p.endswith(".tar"))
    if not found:
        raise ImagesError(f"{images}: no .tar files: expected img2dataset output (webdataset shards)")
    return found


def _hash_one(images: str, out: str, relative: str) -> TarResult:
    tar = storage.join(images, relative)
    target = storage.join(out, HASHES_DIR, relative[: -len(".tar")] + ".parquet")
    record = target[: -len(".parquet")] + ".json"
    source = cache.fingerprint(tar)
    if storage.exists(record) and storage.exists(target):
        previous = storage.read_json(record)
        if previous.get("input") == source:
            return TarResult(**{**previous["counts"], "reused": True})
    try:
        result = hash_tar(tar, target)
    except ImagesError as error:  # a damaged tar fails alone; the others are still hashed
        return TarResult(tar=tar, error=str(error))
    counts = {k: v for k, v in result.__dict__.items() if k not in ("reused", "error")}
    storage.write_json_atomic({"input": source, "counts": counts}, record)
    return result


def hash_tars(images: str, out: str, workers: int = 0, progress: Callable[[str], None] = print) -> list[TarResult]:
    """Step 1 over every tar, `workers` processes at once (0: one per CPU the process may use)."""
    tars = discover_tars(images)
    storage.check_writable(out, "--out")
    workers = workers or available_cpus()
    results = []
    started = time.perf_counter()
    stop = multiprocessing.Event()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tars)), initializer=_start_worker, initargs=(stop,))
    try:
        futures = {pool.submit(_hash_one, images, out, t): t for t in tars}
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results.append(result)
            if result.error:
                progress(f"[{done}/{len(tars)}] {futures[future]}: FAILED: {result.error}")
                continue
            rate = result.images / result.seconds if result.seconds else 0
            how = "already hashed" if result.reused else f"{result.seconds:.1f} s, {rate:,.0f} images/s"
            progress(
                f"[{done}/{len(tars)}] {futures[future]}: {result.images:,} images, {result.corrupt:,} corrupt,"
                f" {result.failed_downloads:,} failed downloads, {result.without_url:,} without url ({how})"
            )
    except BaseException:  # interrupted: the workers drop their tars unwritten, the queued ones never start
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    total = sum(r.images for r in results)
    progress(f"hashed {total:,} images from {len(tars)} tars in {time.perf_counter() - started:.1f} s")
    return sorted(results, key=lambda r: r.tar)


def _by_url(files: list[str]) -> str:
    """SQL: one row of hashes per URL digest of the given hash files; when a URL repeats, the whole row of its
    first sample by key (never a mix of two samples' hashes)."""
    listed = "[" + ", ".join(storage.duckdb_path(p) for p in files) + "]"
    row = ", ".join(f"{c} := {c}" for c in SIDECAR_COLUMNS[1:])
    return (
        f"SELECT {URL_DIGEST}, unnest(arg_min(struct_pack({row}), key)) FROM read_parquet({listed})"
        f" GROUP BY {URL_DIGEST}"
    )


def write_sidecars(settings: Settings, out: str, progress: Callable[[str], None] = print) -> dict[str, int]:
    """Step 2: one sidecar per metadata shard under `settings.shards`, joined on the URL; rows per shard.

    When the downloads are laid out one folder per shard (`<images>/<shard name>/*.tar`, as when img2dataset
    runs once per metadata file), a shard is joined with its own folder's images only; otherwise with all."""
    hashes = storage.join(out, HASHES_DIR)
    fs, root = storage.filesystem(hashes)
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet")) if fs.isdir(root) else []
    if not files:
        raise ImagesError(f"{hashes}: no image hashes yet: hash the downloaded tars first")
    relative = [p[len(root.rstrip("/")) + 1 :] for p in files]
    located = {rel: storage.join(hashes, rel) for rel in relative}
    con = matching.connect(settings.with_(sidecars=out), writes_inputs=True)
    try:
        with interrupts.deferred():  # a signal inside a pyarrow read would be taken for a damaged shard
            written = _join_shards(settings, con, located, out, progress)
            interrupts.raise_if_signalled()
    finally:
        con.close()
    return written


def _join_shards(settings: Settings, con, located: dict[str, str], out: str, progress) -> dict[str, int]:
    """Write each shard's sidecar (the join of its rows with the image hashes); rows per shard."""
    written, shared = {}, False
    for shard in shards.discover(settings.shards):
        interrupts.raise_if_signalled()
        own = [path for rel, path in located.items() if rel.startswith(shard.name + "/")]
        if own:
            images = f"({_by_url(own)})"
        else:
            if not shared:
                statement = f"CREATE TEMP TABLE relaion_images AS {_by_url(list(located.values()))}"
                interrupts.call(lambda statement=statement: con.execute(statement), con.interrupt)
                shared = True
            images = "relaion_images"
        roles = shards.roles(shard)
        query = f"""
            SELECT s.row_key AS key, {", ".join(f"i.{c}" for c in SIDECAR_COLUMNS[1:])}
            FROM (SELECT file_row_number, {roles.key_sql(shard.name)} AS row_key, {quote(roles.url)} AS url
                  FROM read_parquet({storage.duckdb_path(shard.path)}, file_row_number = true)) s
            JOIN {images} i ON i.{URL_DIGEST} = sha256(s.url)
            ORDER BY s.file_row_number"""
        final = storage.join(out, shard.file_name)
        written[shard.name] = _copy_atomic(con, query, final)
        scope = "its own folder's images" if own else "all images"
        progress(f"{shard.name}: sidecar with {written[shard.name]:,} rows from {scope} -> {final}")
    return written


def _copy_atomic(con, query: str, final: str) -> int:
    """Write a query's result as parquet under `final`, visible only once complete; its row count."""

    def copy(target: str) -> int:
        statement = f"COPY ({query}) TO {sql_string(target)} (FORMAT parquet, COMPRESSION zstd, USE_TMP_FILE false)"
        interrupts.call(lambda: con.execute(statement), con.interrupt)
        return pq.ParquetFile(target).metadata.num_rows

    if storage.is_local(final):
        with storage.AtomicPath(final) as target:
            return copy(target)
    with tempfile.TemporaryDirectory(prefix="relaion-sidecar-") as scratch:
        rows = copy(os.path.join(scratch, "sidecar.parquet"))
        storage.copy(os.path.join(scratch, "sidecar.parquet"), final)
    return rows
