"""No location or shard name is ever read as a pattern (issue 19, item 2): a shard named `br[a]cket` beside
`bracket` is matched, published, verified, cleaned and given its sidecar from its own file only, in `relaion
run`, `verify`, `clean` and `hash-images`, locally and on S3. Every pattern character is tried beside a sibling
that the pattern would match, under a location whose own name is a pattern matching a decoy folder beside it;
names with spaces, quotes, `%`, `#`, unicode and a leading `-` go the same way."""

import hashlib
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from relaion_pipeline.cli import main
from relaion_pipeline.core import storage
from relaion_pipeline.demo_data import demo_images
from relaion_pipeline.publishing import release

BLOCKED = "blocked.example.org"  # listed for the run: every row on it is removed
LATE = "late.example.org"  # listed only in the lists given to `verify` afterwards
# (a name read as a pattern, a sibling that the pattern matches)
PAIRS = [
    ("br[a]cket", "bracket"),
    ("st*r", "str"),
    ("s?r", "sxr"),
    ("r[!x]ng", "rang"),
    ("c{a,b}", "ca"),
    ("two/**", "two/x"),
]
ODD = ["sp ace 'q' \"d\" %41 #1", "ünï/-lead", "a]b::c"]  # `::` chains URLs in fsspec
NAMED = [name for name, _ in PAIRS] + ODD  # each holds a listed URL, a listed image and a late-listed URL
SIBLINGS = [sibling for _, sibling in PAIRS]


def rows(name: str, decoy: bool = False) -> list[tuple[str, str, int]]:
    """(key, url, picture seed) of a shard's four rows: in a named shard row 1 is on a listed host, row 3's
    image is listed and row 2 is on the late-listed host; a sibling's or a decoy's rows are all fine."""
    listed = name in NAMED and not decoy
    seed = (NAMED + SIBLINGS).index(name)
    prefix = f"{'decoy-' if decoy else ''}{seed}"
    hosts = ["fine.example", BLOCKED if listed else "fine.example", LATE if listed else "fine.example", "fine.example"]
    return [(f"{prefix}-{i}", f"http://{host}/{prefix}/{i}.jpg", seed * 10 + i + (5000 if decoy else 0))
            for i, host in enumerate(hosts)]  # fmt: skip


def image(seed: int) -> bytes:
    return demo_images.encode(demo_images.picture(seed, (64, 64)))


def write_inputs(root: Path, names: list[str], decoy: bool = False) -> None:
    """Shards, img2dataset downloads (one folder per shard) and the partner lists under `root`."""
    for name in names:
        shard = rows(name, decoy)
        path = root / "shards" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = {"key": [k for k, _, _ in shard], "url": [u for _, u, _ in shard], "caption": ["a photo"] * 4}
        pq.write_table(pa.table(table | {"punsafe": pa.array([0.1] * 4, pa.float32())}), path)
        demo_images.write_downloads(root / "images" / name, [(u, image(s)) for _, u, s in shard], per_tar=4)
    listed = "nothing.example" if decoy else BLOCKED
    images = [] if decoy else [image(rows(name)[3][2]) for name in names if name in NAMED]
    write_list(root / "lists", "url_sha256.txt", [hashlib.sha256(f"{listed}/".encode()).hexdigest()])
    write_list(root / "lists", "image_md5.txt", [hashlib.md5(b).hexdigest() for b in images] or ["0" * 32])
    write_list(root / "late-lists", "url_sha256.txt", [hashlib.sha256(f"{LATE}/".encode()).hexdigest()])


def write_list(location: Path, file: str, values: list[str]) -> None:
    (location / "partner").mkdir(parents=True, exist_ok=True)
    (location / "partner" / file).write_text("".join(v + "\n" for v in values))


def keys(path: str | Path) -> list[str]:
    return pq.read_table(path, columns=["key"]).column("key").to_pylist()


def expected_research(name: str) -> list[str]:
    return [key for i, (key, _, _) in enumerate(rows(name)) if name not in NAMED or i in (0, 2)]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Inputs under a folder whose name is a pattern matching `decoy`, a sibling holding the same names with
    other rows, images and lists."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    root = tmp_path / "r[u]n *"
    write_inputs(root, NAMED + SIBLINGS)
    write_inputs(tmp_path / "run of decoys", NAMED + SIBLINGS, decoy=True)
    return root


def test_every_command_reads_each_name_literally_beside_the_siblings_its_pattern_matches(workspace, capsys):
    root = workspace
    shards, sidecars, out = str(root / "shards"), str(root / "sidecars"), root / "out"
    hashed = main(["hash-images", "--images", str(root / "images"), "--out", sidecars, "--shards", shards,
                   "--workers", "1"])  # fmt: skip
    assert hashed == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("from its own folder's images") == len(NAMED + SIBLINGS)
    for name in NAMED + SIBLINGS:
        sidecar = pq.read_table(Path(sidecars) / f"{name}.parquet").to_pylist()
        own = rows(name)
        assert [(r["key"], r["md5"]) for r in sidecar] == [(k, hashlib.md5(image(s)).hexdigest()) for k, _, s in own]

    flags = ["--shards", shards, "--blocklists", str(root / "lists"), "--sidecars", sidecars,
             "--work", str(out / "work"), "--release", str(out / "releases")]  # fmt: skip
    assert main(["run", *flags]) == 0, capsys.readouterr()
    published = Path(release.resolve(str(out / "releases")))
    manifest = storage.read_json(str(published / "manifest.json"))
    assert sorted(manifest["shards"]) == sorted(NAMED + SIBLINGS) and manifest["held_back"] == {}
    for name in NAMED + SIBLINGS:
        for variant in ("research", "research-safe"):
            assert keys(published / variant / f"{name}.parquet") == expected_research(name), (name, variant)

    capsys.readouterr()
    assert main(["verify", str(out / "releases"), "--blocklists", str(root / "lists")]) == 0
    assert "no list match" in capsys.readouterr().out
    assert main(["verify", str(out / "releases"), "--blocklists", str(root / "late-lists")]) == 1
    mismatches = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("MISMATCH"))
    assert mismatches == sorted(
        f"MISMATCH {variant}/{name}.parquet: 1 rows match the lists ({{'url_sha256': 1}})"
        for name in NAMED
        for variant in ("research", "research-safe")
    )

    cleaned = out / "cleaned"
    by = ["--by", "difference", "--variant", "research"]
    assert main(["clean", "--release", str(out / "releases"), "--input", shards, "--output", str(cleaned), *by]) == 0
    for name in NAMED + SIBLINGS:
        assert keys(cleaned / f"{name}.parquet") == expected_research(name), name


def test_a_local_name_with_a_backslash_and_a_pattern_character_is_held_back_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("b\\[x", "b\\x", "bx"):  # DuckDB splits a local pattern at a backslash: b\[x cannot be named
        table = {"key": [f"{name}-0"], "url": ["http://fine.example/a.jpg"], "caption": ["a photo"]}
        pq.write_table(pa.table(table), shards / f"{name}.parquet")
    (tmp_path / "lists" / "partner").mkdir(parents=True)
    (tmp_path / "lists" / "partner" / "domain.txt").write_text(f"{BLOCKED}\n")
    out = tmp_path / "out"
    flags = ["--shards", str(shards), "--blocklists", str(tmp_path / "lists"), "--sidecars", str(tmp_path / "none"),
             "--work", str(out / "work"), "--release", str(out / "releases")]  # fmt: skip

    assert main(["run", *flags]) == 1

    printed = capsys.readouterr().out
    assert (
        f"{shards}/b\\[x.parquet: DuckDB cannot read a local file whose path holds both a backslash and one of"
        " * ? [ as that file alone; rename it (or its folder) without the backslash or the pattern character"
    ) in printed
    manifest = storage.read_json(str(Path(release.resolve(str(out / "releases"))) / "manifest.json"))
    assert sorted(manifest["shards"]) == ["b\\x", "bx"] and list(manifest["held_back"]) == ["b\\[x"]


# On S3, through s3fs and the fsspec filesystem that DuckDB is given

S3_NAMED = ["br[a]cket", ODD[0]]
S3_SIBLINGS = ["bracket"]


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A bucket on a local S3 server holding the inputs under `in[p]ut/` and decoys under `input/`."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    environment = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "relaion-test",
                   "AWS_SECRET_ACCESS_KEY": "relaion-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
                   "DAGSTER_HOME": str(tmp_path / "unused"), "RELAION_DAGSTER_HOME": str(tmp_path / "dagster")}  # fmt: skip
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    s3fs.S3FileSystem.clear_instance_cache()
    s3 = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
    name = f"laion-{uuid.uuid4().hex[:8]}"  # one bucket per test, whichever server s3fs reached before
    s3.mkdir(name)
    for prefix, decoy in (("in[p]ut", False), ("input", True)):
        local = tmp_path / ("decoys" if decoy else "inputs")
        write_inputs(local, S3_NAMED + S3_SIBLINGS, decoy)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            s3.put_file(str(path), f"{name}/{prefix}/{path.relative_to(local).as_posix()}")  # put_file: no glob
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def s3_keys(location: str) -> list[str]:
    return storage.read_table(location, columns=["key"]).column("key").to_pylist()


def test_on_s3_every_command_reads_each_name_literally_beside_the_siblings_its_pattern_matches(bucket, capsys):
    inputs, out = f"{bucket}/in[p]ut", f"{bucket}/out[*]"
    shards, sidecars, releases = f"{inputs}/shards", f"{inputs}/sidecars", f"{out}/releases"
    hashed = main(["hash-images", "--images", f"{inputs}/images", "--out", sidecars, "--shards", shards,
                   "--workers", "1"])  # fmt: skip
    assert hashed == 0, capsys.readouterr().err
    for name in S3_NAMED + S3_SIBLINGS:
        assert s3_keys(f"{sidecars}/{name}.parquet") == [key for key, _, _ in rows(name)], name

    flags = ["--shards", shards, "--blocklists", f"{inputs}/lists", "--sidecars", sidecars, "--work", f"{out}/work",
             "--release", releases]  # fmt: skip
    assert main(["run", *flags]) == 0, capsys.readouterr()
    published = release.resolve(releases)
    manifest = storage.read_json(f"{published}/manifest.json")
    assert sorted(manifest["shards"]) == sorted(S3_NAMED + S3_SIBLINGS) and manifest["held_back"] == {}
    for name in S3_NAMED + S3_SIBLINGS:
        for variant in ("research", "research-safe"):
            assert s3_keys(f"{published}/{variant}/{name}.parquet") == expected_research(name), (name, variant)

    capsys.readouterr()
    assert main(["verify", releases, "--blocklists", f"{inputs}/lists"]) == 0
    assert main(["verify", releases, "--blocklists", f"{inputs}/late-lists"]) == 1
    mismatches = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("MISMATCH"))
    assert mismatches == sorted(
        f"MISMATCH {variant}/{name}.parquet: 1 rows match the lists ({{'url_sha256': 1}})"
        for name in S3_NAMED
        for variant in ("research", "research-safe")
    )

    by = ["--by", "difference", "--variant", "research"]
    assert main(["clean", "--release", releases, "--input", shards, "--output", f"{out}/cleaned", *by]) == 0
    for name in S3_NAMED + S3_SIBLINGS:
        assert s3_keys(f"{out}/cleaned/{name}.parquet") == expected_research(name), name


def test_files_written_moved_and_removed_on_s3_are_exactly_the_named_ones(bucket):
    shards = f"{bucket}/in[p]ut/shards"
    storage.write_text_atomic("written\n", f"{shards}/st*r.json")
    storage.move(f"{shards}/st*r.json", f"{shards}/moved [1].json")
    storage.remove(f"{shards}/br[a]cket.parquet")

    fs, root = storage.filesystem(shards)
    left = sorted(path[len(root) + 1 :] for path in fs.find(root))
    assert left == sorted(["bracket.parquet", f"{ODD[0]}.parquet", "moved [1].json"])
    assert storage.read_text(f"{shards}/moved [1].json") == "written\n"


def test_a_local_file_written_under_a_pattern_name_has_exactly_that_name(tmp_path):
    storage.write_text_atomic("written\n", str(tmp_path / "st*r [1].json"))
    assert [p.name for p in tmp_path.iterdir()] == ["st*r [1].json"]
