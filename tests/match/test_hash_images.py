"""`relaion hash-images`: img2dataset downloads become the sidecars the pipeline matches image lists through,
and a PDQ list entry made from an edited copy removes the row whose image it is."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.runner import run_all
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo_images
from relaion_pipeline.match import images
from relaion_pipeline.stages import pipeline

ROWS = 30


def relaion(*args):
    return subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def downloads(tmp_path):
    """Two metadata shards of 30 rows (the second in LAION-5B plain style) and their images as img2dataset
    downloaded them, in 4 tars of 15: row 3 failed to download, row 7's file is not an image."""
    urls = [f"http://pics{i}.example.org/photo-{i}.jpg" for i in range(2 * ROWS)]
    files = {url: demo_images.encode(demo_images.picture(i)) for i, url in enumerate(urls)}
    files[urls[3]] = None
    files[urls[7]] = b"<html>not an image</html>"
    shards = tmp_path / "in" / "shards"
    shards.mkdir(parents=True)
    pq.write_table(
        pa.table({"key": [f"a-{i}" for i in range(ROWS)], "url": urls[:ROWS], "caption": ["a photo"] * ROWS}),
        shards / "a.parquet",
    )
    pq.write_table(
        pa.table({"SAMPLE_ID": list(range(ROWS)), "URL": urls[ROWS:], "TEXT": ["a photo"] * ROWS,
                  "NSFW": ["UNLIKELY"] * ROWS}),
        shards / "b.parquet",
    )  # fmt: skip
    demo_images.write_downloads(tmp_path / "downloads", list(files.items()), per_tar=15)
    return tmp_path, urls, files


def test_sidecars_hold_every_downloaded_image_keyed_by_row_key(downloads):
    root, urls, files = downloads
    done = relaion("hash-images", "--images", root / "downloads", "--out", root / "sidecars",
                   "--shards", root / "in" / "shards", "--workers", 2)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "59 images hashed (1 corrupt: byte hashes only, 1 failed downloads, 0 without url)" in done.stdout
    assert done.stdout.count("[") >= 4, "progress per tar"

    a = pq.read_table(root / "sidecars" / "a.parquet").to_pylist()
    b = pq.read_table(root / "sidecars" / "b.parquet").to_pylist()
    assert [r["key"] for r in a] == [f"a-{i}" for i in range(ROWS) if i != 3]
    assert [r["key"] for r in b] == [str(i) for i in range(ROWS)]
    by_key = {r["key"]: r for r in a}
    image = files[urls[0]]
    assert by_key["a-0"]["md5"] == hashlib.md5(image).hexdigest()
    assert by_key["a-0"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert by_key["a-7"]["md5"] == hashlib.md5(files[urls[7]]).hexdigest() and by_key["a-7"]["pdq"] is None
    assert by_key["a-0"]["pdq"] == images.hash_image(image)["pdq"] and by_key["a-0"]["pdq_quality"] >= 50

    cached = [row for p in (root / "sidecars" / ".images").glob("*.parquet") for row in pq.read_table(p).to_pylist()]
    assert len(cached) == 59 and not any(url in str(row) for row in cached for url in urls), "URLs are not kept"

    again = relaion("hash-images", "--images", root / "downloads", "--out", root / "sidecars",
                    "--shards", root / "in" / "shards")  # fmt: skip
    assert again.returncode == 0 and again.stdout.count("already hashed") == 4


def test_a_damaged_tar_fails_alone_and_is_named(downloads):
    root, _, _ = downloads
    damaged = root / "downloads" / "00001.tar"
    damaged.write_bytes(damaged.read_bytes()[:3000])
    done = relaion("hash-images", "--images", root / "downloads", "--out", root / "sidecars",
                   "--shards", root / "in" / "shards")  # fmt: skip
    assert done.returncode == 1
    assert f"error: {damaged}: not a readable tar file" in done.stderr
    assert "hashed" in done.stdout and (root / "sidecars" / "b.parquet").exists(), "the other tars were hashed"
    assert not (root / "sidecars" / ".images" / "00001.parquet").exists()


def test_a_pdq_entry_of_a_resized_copy_removes_the_original_row(downloads, tmp_path, monkeypatch):
    root, urls, files = downloads
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    images.hash_tars(str(root / "downloads"), str(root / "in" / "sidecars"), progress=lambda line: None)
    settings = Settings.layout(root / "in", root / "out")
    images.write_sidecars(settings, str(root / "in" / "sidecars"), progress=lambda line: None)
    copy = demo_images.TRANSFORMS["resized to 60%"](demo_images.picture(ROWS + 5))  # row 5 of shard b
    (root / "in" / "blocklists" / "partner").mkdir(parents=True)
    (root / "in" / "blocklists" / "partner" / "pdq.txt").write_text(images.pdq_of(copy)[0] + "\n")

    summary = run_all(settings, progress=lambda line: None)

    assert summary.ok, summary
    removals = pq.read_table(pipeline.Work(settings.work).removals("b")).to_pylist()
    assert [(r["row_key"], r["kind"], r["match"]) for r in removals] == [("5", "pdq", "image-near")]
    assert 0 < removals[0]["distance"] <= 31
    assert pq.read_table(pipeline.Work(settings.work).removals("a")).num_rows == 0
    research = pq.read_table(pipeline.Work(settings.work).variant("research", "b"))
    assert research.num_rows == ROWS - 1 and urls[ROWS + 5] not in research.column("URL").to_pylist()
    removed = urls[ROWS + 5]
    for path in (root / "out").rglob("*"):
        if path.suffix == ".parquet":
            assert removed not in str(pq.read_table(path).to_pylist()), path
        elif path.is_file():
            assert removed.encode() not in path.read_bytes(), path
    stats = json.loads(Path(pipeline.Work(settings.work).stats("removals", "b")).read_text())
    assert stats["removed_by_kind"] == {"pdq": 1}


def test_downloads_in_one_folder_per_shard_are_joined_with_their_own_shard_only(downloads):
    root, urls, files = downloads
    layout = root / "per-shard"
    reused = urls[0]  # shard b's folder also holds a different picture under shard a's first URL
    demo_images.write_downloads(layout / "a", [(u, files[u]) for u in urls[:ROWS]], per_tar=10)
    other = demo_images.encode(demo_images.picture(999))
    demo_images.write_downloads(layout / "b", [(u, files[u]) for u in urls[ROWS:]] + [(reused, other)], per_tar=10)

    done = relaion("hash-images", "--images", layout, "--out", root / "sidecars", "--shards", root / "in" / "shards")

    assert done.returncode == 0, done.stderr
    assert done.stdout.count("from its own folder's images") == 2
    a = {r["key"]: r for r in pq.read_table(root / "sidecars" / "a.parquet").to_pylist()}
    assert a["a-0"]["md5"] == hashlib.md5(files[reused]).hexdigest() != hashlib.md5(other).hexdigest()
    assert pq.read_table(root / "sidecars" / "b.parquet").num_rows == ROWS


def test_a_url_downloaded_twice_takes_one_whole_sample_never_a_mix(downloads):
    root, urls, files = downloads
    twice = root / "twice"
    corrupt, good = b"not an image at all", demo_images.encode(demo_images.picture(77))
    demo_images.write_downloads(twice, [(urls[0], corrupt), (urls[0], good)], per_tar=1)

    done = relaion("hash-images", "--images", twice, "--out", root / "sidecars", "--shards", root / "in" / "shards")

    assert done.returncode == 0, done.stderr
    (row,) = pq.read_table(root / "sidecars" / "a.parquet").to_pylist()
    assert (row["md5"], row["pdq"], row["pdq_quality"]) == (hashlib.md5(corrupt).hexdigest(), None, None)
