"""A hostile or careless operator (issue 19's remaining cases), through the CLI as they would run it: signals in
the middle of `clean` and `hash-images`, locations that cannot be written, a publish to S3 killed midway, two
work locations publishing to one release location, and a `latest` or release location that is not what it
should be. Each test asserts what the operator relies on: the command stops or fails naming the cause, nothing
that looks complete is left, `latest` never moves to something worse, and `verify` accepts only what it proves.

One run publishes a release of two shards (`good-1`, `good-2`: 200 rows each plus one listed row, the removal
list published); each test works on its own copy of that workspace.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import BLOCKED_URL, relaion_shard
from test_s3 import s3_env, s3_server  # noqa: F401  (the moto server and its environment)

from relaion_pipeline.core import shard_lock
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo_images
from relaion_pipeline.publishing import release
from relaion_pipeline.publishing.manifest import ReleaseError

ROWS = [(f"http://fine.example/{i}.jpg", f"a picture {i}", (i % 10) / 10) for i in range(200)] + [
    (BLOCKED_URL, "secret caption", 0.1)
]
ENV = {"RELAION_REMOVAL_LIST_MAX_MATCH_SHARE": "1.0"}  # publish the removal list


def relaion(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV, **(env or {})),
    )  # fmt: skip


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **ENV),
    )  # fmt: skip


def write_shard(path: Path, name: str, rows=ROWS) -> None:
    relaion_shard(path, name, rows)


class Workspace:
    """Inputs, work and releases of one pipeline under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.shards, self.lists, self.releases = root / "shards", root / "lists", root / "releases"
        self.work = root / "work"

    def layout(self, **where) -> list:
        places = {"shards": self.shards, "blocklists": self.lists, "sidecars": self.root / "sidecars",
                  "work": self.work, "release": self.releases} | where  # fmt: skip
        return [item for name, place in places.items() for item in (f"--{name}", place)]

    def run(self, *extra, env=None, **where) -> subprocess.CompletedProcess:
        return relaion("run", *self.layout(**where), *extra, env=env)

    @property
    def latest(self) -> str:
        return (self.releases / "latest").read_text().strip()

    def manifest(self, version: str | None = None) -> dict:
        return json.loads((self.releases / (version or self.latest) / "manifest.json").read_text())


def make(root: Path, names=("good-1", "good-2")) -> Workspace:
    space = Workspace(root)
    space.shards.mkdir(parents=True)
    for name in names:
        write_shard(space.shards, name)
    (space.lists / "iwf").mkdir(parents=True)
    expression = BLOCKED_URL.removeprefix("http://")
    (space.lists / "iwf" / "url_sha256.txt").write_text(hashlib.sha256(expression.encode()).hexdigest() + "\n")
    return space


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    ran = make(root).run()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return root


@pytest.fixture
def space(published, tmp_path) -> Workspace:
    """A copy of the published workspace (modification times kept: its shards are up to date)."""
    shutil.copytree(published, tmp_path / "ws", symlinks=True)
    return Workspace(tmp_path / "ws")


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and folders of an interrupted write under `folder`."""
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def stop_after(process: subprocess.Popen, first_line: str, signum: int) -> tuple[str, str]:
    """Signal `process` once it has printed a line starting with `first_line` (so it is mid-work); its output."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(first_line):
            break
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    return "".join(seen) + out, err


# 1. SIGINT and SIGTERM during clean and hash-images.


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_clean_stops_it_leaving_no_shard_and_no_report(space, signum):
    old = space.root / "old-copy"
    old.mkdir()
    big = [(f"http://old.example/{i}.jpg", f"an old picture {i}", 0.1) for i in range(150_000)] + ROWS
    write_shard(old, "part-00", rows=big)
    for n in range(1, 6):  # six shards of 150,201 rows: the clean is mid-work after its first one
        shutil.copy(old / "part-00.parquet", old / f"part-{n:02d}.parquet")
    output = space.root / "cleaned"

    process = start("clean", "--release", space.releases, "--input", old, "--output", output)
    out, err = stop_after(process, "[1/6]", signum)

    assert process.returncode == 128 + signum, out + err
    assert err.splitlines() == ["interrupted"]
    assert "cleaned " not in out
    assert not (output / "clean-report.json").exists()
    assert not list(output.rglob("*.parquet")), "the shards it wrote are removed: nothing looks complete"
    assert not leftovers(output)


@pytest.fixture
def downloads(tmp_path) -> Path:
    """One metadata shard of 3,000 rows and its images in 12 tars (one picture, so they are quick to make)."""
    urls = [f"http://pics{i}.example.org/photo-{i}.jpg" for i in range(3000)]
    (tmp_path / "shards").mkdir()
    pq.write_table(
        pa.table({"key": [f"a-{i}" for i in range(len(urls))], "url": urls, "caption": ["a photo"] * len(urls)}),
        tmp_path / "shards" / "a.parquet",
    )
    picture = demo_images.encode(demo_images.picture(1))
    demo_images.write_downloads(tmp_path / "downloads", [(url, picture) for url in urls], per_tar=250)
    return tmp_path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_hash_images_stops_it_leaving_no_sidecar(downloads, signum):
    out = downloads / "sidecars"

    process = start("hash-images", "--images", downloads / "downloads", "--out", out,
                    "--shards", downloads / "shards", "--workers", 1)  # fmt: skip
    printed, err = stop_after(process, "[1/12]", signum)

    assert process.returncode == 128 + signum, printed + err
    assert err.splitlines() == ["interrupted"], "one line, no worker's traceback"
    assert not list(out.glob("*.parquet")), "no sidecar"
    assert len(list((out / ".images").glob("*.json"))) < 12, "it stopped: the tars left were not hashed"
    for record in (out / ".images").glob("*.json"):  # what a rerun reuses is whole
        assert pq.read_table(record.with_suffix(".parquet")).num_rows == 250
    assert not leftovers(out)


# 2. Locations that cannot be written.


@pytest.fixture
def unwritable(tmp_path):
    """A folder the test fills, then seals (the returned function) so that this process cannot write there: a
    tmpfs remounted read-only as root (root ignores file permissions), a folder without write permission
    otherwise."""
    folder = tmp_path / "sealed"
    folder.mkdir()
    if os.geteuid() != 0:

        def seal():
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)

        yield folder, seal
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"running as root, where permissions do not stop writes, and cannot mount a read-only tmpfs"
                    f" ({done.stderr.decode().strip()})")  # fmt: skip
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def one_error(err: str, starts: str) -> None:
    assert len(err.splitlines()) == 1 and err.startswith(starts), err
    assert "expected a folder this process may write to" in err


def test_a_read_only_work_location_fails_at_once_naming_it_and_its_flag(space, unwritable):
    folder, seal = unwritable
    shutil.copytree(space.work, folder, dirs_exist_ok=True, symlinks=True)
    seal()
    before = space.latest

    ran = space.run(work=folder)

    assert ran.returncode == 2
    one_error(ran.stderr, f"error: {folder} (--work, RELAION_WORK): cannot write there (")
    assert space.latest == before


def test_hash_images_to_a_read_only_out_fails_before_hashing(downloads, unwritable):
    folder, seal = unwritable
    seal()

    ran = relaion("hash-images", "--images", downloads / "downloads", "--out", folder, "--shards", downloads / "shards")

    assert ran.returncode == 2
    one_error(ran.stderr, f"error: {folder} (--out): cannot write there (")
    assert "images hashed" not in ran.stdout


@pytest.mark.parametrize("where", ["read-only", "a file in the way"])
def test_clean_to_an_output_that_cannot_be_written_fails_naming_it(space, request, where):
    if where == "read-only":
        folder, seal = request.getfixturevalue("unwritable")
        seal()
        output = folder / "cleaned"
    else:
        output = space.root / "notes.txt"
        output.write_text("an operator's file\n")

    ran = relaion("clean", "--release", space.releases, "--input", space.shards, "--output", output)

    assert ran.returncode == 2
    one_error(ran.stderr, f"error: {output} (--output): cannot write there (")
    if where != "read-only":
        assert output.read_text() == "an operator's file\n"


# 3. A publish to S3 killed midway.


@pytest.fixture
def s3_space(space, request):
    """The workspace publishing to a bucket (inputs and work stay local)."""
    request.getfixturevalue("s3_env")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    bucket = f"releases-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    space.releases = f"s3://{bucket}/re-laion"
    ran = space.run(release=space.releases)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    yield space, fs, f"{bucket}/re-laion"
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_publish_to_s3_killed_before_its_manifest_leaves_nothing_verify_or_the_next_publish_accepts(s3_space):
    space, fs, root = s3_space
    version = fs.cat_file(f"{root}/latest").decode().strip()
    # killed before its manifest and `latest`: the version's objects are there, and one no manifest lists
    fs.rm_file(f"{root}/{version}/manifest.json")
    fs.rm_file(f"{root}/latest")
    fs.pipe_file(f"{root}/{version}/research/stray.parquet", fs.cat_file(f"{root}/{version}/research/good-1.parquet"))
    other = "0123456789abcdef"  # a version whose publish was killed and that no later content makes again
    fs.pipe_file(f"{root}/{other}/research/good-1.parquet", b"PAR1 half a file")

    for target in (f"s3://{root}/{version}", f"s3://{root}/{other}", f"s3://{root}"):
        checked = relaion("verify", target)
        assert checked.returncode != 0 and "OK" not in checked.stdout, target
        assert "not a release" in checked.stderr, checked.stderr

    ran = space.run(release=space.releases)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert fs.cat_file(f"{root}/latest").decode().strip() == version
    assert not fs.exists(f"{root}/{version}/research/stray.parquet")
    assert not fs.exists(f"{root}/{other}"), "a version prefix without a manifest is cleared"
    assert not fs.exists(f"{root}/.lock"), "the release location's lock is gone with its publish"
    checked = relaion("verify", f"s3://{root}")
    assert checked.returncode == 0 and f"release {version}: OK" in checked.stdout, checked.stdout + checked.stderr


def test_an_s3_release_lock_left_by_a_killed_publish_of_this_machine_is_taken_over(s3_space):
    space, fs, root = s3_space
    first = fs.cat_file(f"{root}/latest").decode().strip()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"host": socket.gethostname(), "pid": int(gone.stdout), "token": "killed", "since": "2026-01-01"}
    fs.pipe_file(f"{root}/.lock", json.dumps(holder).encode())
    (space.shards / "good-2.parquet").unlink()  # a new release is due

    ran = space.run(release=space.releases)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert fs.cat_file(f"{root}/latest").decode().strip() != first
    assert not fs.exists(f"{root}/.lock")


# 4. Two work locations publishing to one release location.


@pytest.mark.usefixtures("s3_env")
def test_a_publish_waits_for_the_release_locations_lock_whichever_work_location_holds_it(space):
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    bucket = f"locks-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    probe = (
        "import sys\nfrom relaion_pipeline.core import shard_lock\n"
        "try:\n    with shard_lock.publishing(sys.argv[1], timeout=0):\n        print('took it')\n"
        "except shard_lock.ReleaseLocked as error:\n    print(error)"
    )
    for location in (str(space.releases), f"s3://{bucket}/re-laion"):
        with shard_lock.publishing(location):  # another publish (any work location) is under way
            held = subprocess.run([sys.executable, "-c", probe, location], capture_output=True, text=True)
        after = subprocess.run([sys.executable, "-c", probe, location], capture_output=True, text=True)

        assert held.stdout.startswith(f"{location}/.lock: another publish to this release location"), held
        assert after.stdout == "took it\n", after
    assert sorted(p.name for p in space.releases.iterdir()) == [space.latest, "latest"], "no lock file stays"


def test_a_second_work_location_with_fewer_shards_never_moves_latest_to_a_release_without_them(space):
    first = space.latest
    other = space.root / "other"
    (other / "shards").mkdir(parents=True)
    shutil.copy(space.shards / "good-1.parquet", other / "shards" / "good-1.parquet")

    ran = space.run(shards=other / "shards", work=other / "work")

    assert ran.returncode == 1
    assert (
        f"no release published: release {first} holds 1 shard(s) that are not in {other / 'shards'} and that work"
        f" location {other / 'work'} never matched (good-2)" in ran.stderr
    ), ran.stderr
    assert space.latest == first
    assert space.run().returncode == 0 and space.latest == first, "the pipeline that has them goes on"

    allowed = space.run("--allow-partial-release", shards=other / "shards", work=other / "work")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert sorted(space.manifest()["shards"]) == ["good-1"] and list(space.manifest()["left"]) == ["good-2"]


# 5. More of the same kind.


def test_hash_images_never_writes_its_sidecars_into_its_inputs(downloads):
    shards, images = downloads / "shards", downloads / "downloads"
    before = {p: p.read_bytes() for p in downloads.rglob("*") if p.is_file()}
    for out, flag, inputs in (
        (shards, "--shards", shards),  # `<out>/a.parquet` replaced the input shard with its sidecar
        (shards / "sidecars", "--shards", shards),  # read as a shard by the next run
        (images, "--images", images),  # `<out>/<n>.parquet` would replace img2dataset's table of the same name
    ):
        ran = relaion("hash-images", "--images", images, "--out", out, "--shards", shards)

        assert ran.returncode == 2
        assert ran.stderr == (
            f"error: --out {out} is {flag} {inputs} or inside it: the sidecars would overwrite the input files"
            " or be read as input; expected a folder of their own (the input is never modified)\n"
        )
    assert {p: p.read_bytes() for p in downloads.rglob("*") if p.is_file()} == before, "no input modified"
    assert not list(downloads.rglob(".images"))


@pytest.mark.parametrize("latest", [b"", b"\xff\xfe\x00garbage", b"../elsewhere\n"], ids=["empty", "binary", "path"])
def test_a_latest_that_names_no_version_stops_run_and_clean_naming_it(space, latest):
    (space.releases / "latest").write_bytes(latest)
    before = sorted(p.name for p in space.releases.iterdir())

    ran = space.run("--force")
    cleaned = relaion("clean", "--release", space.releases, "--input", space.shards, "--output", space.root / "out")

    for done in (ran, cleaned):
        assert done.returncode == 2
        assert done.stderr.startswith(f"error: {space.releases / 'latest'}: "), done.stderr
        assert "is not a release version" in done.stderr or "not text" in done.stderr
    assert (space.releases / "latest").read_bytes() == latest, "latest is never rewritten over the operator's file"
    assert sorted(p.name for p in space.releases.iterdir()) == before, "nothing published"
    assert not (space.root / "out").exists()


def test_clean_by_difference_with_a_tampered_release_file_writes_nothing(space):
    published = space.releases / space.latest / "research-safe" / "good-1.parquet"
    data = bytearray(published.read_bytes())
    data[len(data) // 2] ^= 1
    published.write_bytes(bytes(data))
    output = space.root / "cleaned"

    ran = relaion(
        "clean", "--release", space.releases, "--input", space.shards, "--output", output, "--by", "difference"
    )

    assert ran.returncode == 1
    assert ran.stderr == (
        f"error: {space.releases / space.latest}: not used to clean: research-safe/good-1.parquet: size or sha256"
        " does not match the manifest (check it with relaion verify)\n"
    )
    assert not output.exists()


def test_the_release_job_on_its_own_refuses_a_release_location_that_is_a_file(tmp_path):
    """The UI's release job publishes without `relaion run`'s checks before work: the lock of a file is no lock."""
    (tmp_path / "releases").write_text("an operator's file\n")
    settings = Settings(work=str(tmp_path / "work"), release=str(tmp_path / "releases"))

    with pytest.raises(ReleaseError, match=r"\(--release, RELAION_RELEASE\) is a file"):
        release.publish(settings, ["good-1"])
    assert (tmp_path / "releases").read_text() == "an operator's file\n"
