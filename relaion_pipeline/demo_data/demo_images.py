"""Synthetic pictures and img2dataset-style downloads, for tests, benchmarks and demos of image hashing.

No image is ever fetched: each picture is a smooth random field of colour (a few low-frequency waves per
channel), so that distinct seeds give unrelated PDQ hashes, while resizing, re-encoding, cropping or brightening
one picture keeps its hash close, as with photographs.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance


def picture(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A smooth random RGB picture of `size` (width, height), the same for the same seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        field = np.zeros((height, width))
        for _ in range(6):
            fx, fy = rng.uniform(-5, 5, size=2)
            field += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
        channels.append(field)
    pixels = np.stack(channels, axis=-1)
    pixels = (pixels - pixels.min()) / (np.ptp(pixels) or 1.0) * 255
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


TRANSFORMS = {
    "resized to 60%": lambda im: im.resize((int(im.width * 0.6), int(im.height * 0.6)), Image.Resampling.BILINEAR),
    "upscaled to 150%": lambda im: im.resize((int(im.width * 1.5), int(im.height * 1.5)), Image.Resampling.BICUBIC),
    "JPEG quality 30": lambda im: Image.open(io.BytesIO(encode(im, quality=30))),
    "cropped 1% at one corner": lambda im: im.crop((im.width // 100, im.height // 100, im.width, im.height)),
    "brightness +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "brightness -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast -20%": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
}
# Edits PDQ is known not to survive at distance 31 (reported by benchmarks/pdq.py, not expected to match).
BEYOND = {
    "cropped 2% each side": lambda im: im.crop(
        (im.width // 50, im.height // 50, im.width - im.width // 50, im.height - im.height // 50)
    ),
    "cropped 5% each side": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
}


def write_downloads(out: str | Path, samples: list[tuple[str, bytes | None]], per_tar: int = 100) -> list[Path]:
    """Write `samples` (url, image file bytes, or None for a failed download) as img2dataset does:
    `<n>.tar` with `<key>.jpg`, `<key>.txt` and `<key>.json`, and `<n>.parquet` with key, url, status."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tars = []
    for shard, start in enumerate(range(0, len(samples), per_tar)):
        name = f"{shard:05d}"
        keys, urls, statuses = [], [], []
        with tarfile.open(out / f"{name}.tar", "w") as archive:
            for i, (url, data) in enumerate(samples[start : start + per_tar]):
                key = f"{shard:05d}{i:04d}"
                keys.append(key)
                urls.append(url)
                statuses.append("success" if data is not None else "failed_to_download")
                if data is None:
                    continue
                meta = json.dumps({"key": key, "url": url, "status": "success", "caption": "a picture"}).encode()
                for extension, payload in (("jpg", data), ("txt", b"a picture"), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
        pq.write_table(pa.table({"key": keys, "url": urls, "status": statuses}), out / f"{name}.parquet")
        tars.append(out / f"{name}.tar")
    return tars
