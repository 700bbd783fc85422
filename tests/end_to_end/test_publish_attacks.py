"""A hostile or careless operator against publishing that links work files into a release (issue 21): a release
on another file system, work files edited or replaced behind the pipeline's back (size and modification time
restored), digest records tampered with, a non-root operator whose published work files are read-only, two
releases sharing files, a release in another bucket than its work with names that look like patterns, a work
file replaced while the release links it, and the blocklist sensor with a run still to start.

Each test asserts what the operator relies on: no listed row is published or stays published while `relaion
run` says all is well, `latest` never moves to something worse, the cause is named, and `relaion verify`
accepts only what it proves.

Every test publishes its own workspace of two shards (`good-1`, `good-2`: 200 rows each plus one listed row).
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import BLOCKED_URL, sensor_requests
from moto.server import ThreadedMotoServer
from test_operator_attacks import ENV, Workspace, write_shard
from test_operator_attacks import make as make_files

from assets.definitions import build_definitions
from assets.instance import instance_for
from assets.partitions import shard_partitions
from assets.runner import run_all
from relaion_pipeline import status
from relaion_pipeline.cli import main
from relaion_pipeline.core import storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import release

LISTED = "research-safe/good-1.parquet"  # the file each attack puts the listed row into


def relaion(*args, env=None) -> subprocess.CompletedProcess:
    """`relaion <args>` in this process, as the command would run (its settings' variables set for the call,
    its output caught): the same code without a new process's start-up."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in {**ENV, **(env or {}), "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", "")}.items():
            patch.setenv(variable, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


class Space(Workspace):
    def run(self, *extra, env=None, **where) -> subprocess.CompletedProcess:
        return relaion("run", *self.layout(**where), *extra, env=env)


def make(root: Path, names=("good-1", "good-2")) -> Space:
    make_files(root, names)
    return Space(root)


@pytest.fixture
def space(tmp_path) -> Workspace:
    """A workspace published once (release location beside its work: files are linked)."""
    ws = make(tmp_path / "ws")
    ran = ws.run()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ws


def forged(target: Path, shard: Path) -> bytes:
    """Parquet bytes of `target`'s schema and exact size holding some of its rows and the shard's listed row."""
    schema = pq.read_schema(target)
    rows = pq.read_table(target)
    source = pq.read_table(shard)
    listed = source.filter(pc.equal(source["url"], BLOCKED_URL))
    listed = listed.select(schema.names).cast(schema)

    def render(table: pa.Table, pad: int) -> bytes:
        sink = io.BytesIO()
        padded = table.replace_schema_metadata({**(schema.metadata or {}), b"pad": b"x" * pad})
        pq.write_table(padded, sink, compression="zstd")
        return sink.getvalue()

    want = target.stat().st_size
    for drop in range(1, rows.num_rows):
        table = pa.concat_tables([rows.slice(0, rows.num_rows - drop), listed])
        base = len(render(table, 0))
        for pad in range(max(0, want - base - 40), want - base + 40):
            if len(data := render(table, pad)) == want:
                return data
    raise AssertionError(f"no forgery of {want} bytes")


def tamper(target: Path, shard: Path, in_place: bool) -> None:
    """Put the listed row into `target` keeping its size and modification time: written into the file itself
    (as root may, read-only or not), or as another file renamed over it."""
    before = target.stat()
    data = forged(target, shard)
    if in_place:
        os.chmod(target, before.st_mode | 0o200)
        with open(target, "r+b") as handle:
            handle.write(data)
        os.chmod(target, before.st_mode)
    else:
        other = target.with_name(".forged")
        other.write_bytes(data)
        os.replace(other, target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns


def verified(location, lists) -> subprocess.CompletedProcess:
    return relaion("verify", location, "--blocklists", lists)


def add_shard(ws: Workspace, name: str = "good-3") -> None:
    """A new shard in the input: the next run assembles a new release from every shard's work files."""
    write_shard(ws.shards, name)


# 1. A release location on another file system than the work location: streamed copies.


@pytest.fixture
def shm_releases():
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    folder = Path(tempfile.mkdtemp(prefix="relaion-releases-", dir="/dev/shm"))
    yield folder / "releases"
    shutil.rmtree(folder, ignore_errors=True)


def test_a_release_on_another_file_system_is_streamed_verifies_and_its_kept_digests_are_its_bytes(
    tmp_path, shm_releases
):
    ws = make(tmp_path / "ws")
    ws.releases = shm_releases
    ran = ws.run(release=shm_releases)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    checked = verified(shm_releases, ws.lists)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    version = ws.latest
    for name in ("good-1", "good-2"):
        for variant in ("research", "research-safe"):
            published = shm_releases / version / variant / f"{name}.parquet"
            work = ws.work / variant / f"{name}.parquet"
            assert published.stat().st_dev != work.stat().st_dev
            assert published.read_bytes() == work.read_bytes()
    kept = [json.loads(p.read_text()) for p in (ws.work / "digests").glob("*.json")]
    published = [k for k in kept if k["location"].startswith(str(shm_releases))]
    assert len(published) == 4
    for record in published:
        data = Path(record["location"]).read_bytes()
        assert (record["bytes"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())

    again = ws.run(release=shm_releases)
    assert again.returncode == 0 and ws.latest == version, again.stdout + again.stderr


# 2. A work file edited in place (it is the published file too: linked), or replaced, size and mtime restored.


def test_a_linked_work_file_edited_in_place_does_not_stay_published_while_run_says_all_is_well(space):
    """Root ignores the read-only mode: writing into the work file writes into the published file. The next
    `relaion run` makes the work file again; it must either put the right bytes back into the release or fail
    naming the file, never exit 0 with `latest` holding a listed row."""
    version = space.latest
    tamper(space.work / LISTED, space.shards / "good-1.parquet", in_place=True)
    assert BLOCKED_URL in pq.read_table(space.releases / version / LISTED)["url"].to_pylist()  # linked: published

    ran = space.run()

    checked = verified(space.releases, space.lists)
    assert checked.returncode == 0 or (ran.returncode != 0 and LISTED in ran.stdout + ran.stderr), (
        f"run exited {ran.returncode} ({ran.stdout[-400:]}) while latest {space.latest} fails verify: {checked.stdout}"
    )


def test_a_work_file_replaced_by_one_of_the_same_size_and_mtime_is_made_again_before_any_release(space):
    tamper(space.work / LISTED, space.shards / "good-1.parquet", in_place=False)
    add_shard(space)  # the next release is assembled from every shard's work files

    ran = space.run()

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert set(space.manifest()["shards"]) == {"good-1", "good-2", "good-3"}
    checked = verified(space.releases, space.lists)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    assert BLOCKED_URL not in pq.read_table(space.work / LISTED)["url"].to_pylist()


def test_verify_names_a_published_file_edited_in_place(space):
    tamper(space.work / LISTED, space.shards / "good-1.parquet", in_place=True)

    checked = verified(space.releases, space.lists)

    assert checked.returncode == 1
    assert f"MISMATCH {LISTED}: sha256 " in checked.stdout
    assert f"MISMATCH {LISTED}: 1 rows match the lists" in checked.stdout, "and what the change put there"


# 3. Digest records tampered with: never make a changed file look unchanged, never an unclear crash.


def _record_of(ws: Workspace, location: Path) -> Path:
    return ws.work / "digests" / (hashlib.sha256(str(location).encode()).hexdigest()[:40] + ".json")


def _sealed(record: dict) -> dict:
    body = {k: v for k, v in record.items() if k != "digest"}
    return body | {
        "digest": hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    }


def _fingerprint(path: Path) -> dict:
    info = os.stat(path)
    return {"bytes": info.st_size, "modified": str(info.st_mtime), "inode": info.st_ino, "changed": str(info.st_ctime)}


TAMPERING = {
    "sha256 set back, its digest not": lambda old, now: old | {"fingerprint": now},
    "cut short": lambda old, now: json.dumps(old)[:40],
    "garbage": lambda old, now: "\xff\x00 not json",
    "a JSON list": lambda old, now: [old],
    "the record of another location": lambda old, now: None,  # good-2's research-safe: same size
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_a_tampered_digest_record_never_makes_a_replaced_work_file_look_unchanged(space, how):
    work_file = space.work / LISTED
    record = _record_of(space, work_file)
    old = json.loads(record.read_text())
    assert old["location"] == str(work_file)
    tamper(work_file, space.shards / "good-1.parquet", in_place=False)
    made = TAMPERING[how](old, _fingerprint(work_file))
    if made is None:
        shutil.copyfile(_record_of(space, space.work / "research-safe" / "good-2.parquet"), record)
    else:
        record.write_text(made if isinstance(made, str) else json.dumps(made), errors="surrogateescape")
    add_shard(space)

    ran = space.run()

    assert ran.returncode == 0, ran.stdout + ran.stderr
    checked = verified(space.releases, space.lists)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr


def test_a_forged_digest_record_is_a_documented_limit_that_verify_still_names(space):
    """A forger who recomputes the record's own digest makes the replaced file look unchanged to the cache; the
    release's own check trusts it, `relaion verify` (every byte) does not."""
    work_file = space.work / LISTED
    record = _record_of(space, work_file)
    old = json.loads(record.read_text())
    tamper(work_file, space.shards / "good-1.parquet", in_place=False)
    record.write_text(json.dumps(_sealed(old | {"fingerprint": _fingerprint(work_file)})))
    add_shard(space)

    space.run()

    checked = verified(space.releases, space.lists)
    assert checked.returncode == 1 and f"MISMATCH {LISTED}" in checked.stdout, checked.stdout + checked.stderr


# 4. A non-root operator: published work files are read-only to them.


NOT_ROOT = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]  # root obeys file modes


def as_operator(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*NOT_ROOT, sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV, **(env or {})),
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_an_operator_bound_by_file_modes_reruns_changes_settings_and_lists_cleans_and_deletes_work(tmp_path):
    ws = make(tmp_path / "ws")
    flags = ws.layout()
    for step, env in [("first run", None), ("a changed setting", {"RELAION_SAFE_THRESHOLD": "0.25"})]:
        ran = as_operator("run", *flags, env=env)  # the second writes research-safe anew over a read-only file
        assert ran.returncode == 0, (step, ran.stdout[-2000:] + ran.stderr)
    first = sorted(p.name for p in ws.releases.iterdir() if p.is_dir())
    assert len(first) == 2
    with (ws.lists / "iwf" / "url_sha256.txt").open("a") as handle:
        handle.write(hashlib.sha256(b"fine.example/7.jpg").hexdigest() + "\n")  # a new list version
    ran = as_operator("run", *flags, env={"RELAION_SAFE_THRESHOLD": "0.25"})
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    assert ws.manifest()["shards"]["good-1"]["rows_removed"] == 2

    for by in (["--by", "removal-list"], ["--by", "difference"]):
        cleaned = as_operator("clean", "--release", ws.releases, "--input", ws.shards,
                              "--output", tmp_path / f"cleaned{by[1]}", *by)  # fmt: skip
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    for version in (p for p in ws.releases.iterdir() if p.is_dir()):
        checked = as_operator("verify", version)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    removed = subprocess.run([*NOT_ROOT, "rm", "-rf", str(ws.work)], capture_output=True, text=True)
    assert removed.returncode == 0 and not ws.work.exists(), removed.stderr
    ran = as_operator("run", *flags, env={"RELAION_SAFE_THRESHOLD": "0.25"})
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    checked = as_operator("verify", ws.releases, "--blocklists", ws.lists)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# 5. Two releases sharing files (a setting of the release alone, its license: both link the same work files).


@pytest.fixture
def two_releases(space) -> tuple[Workspace, str, str]:
    v1 = space.latest
    ran = space.run(env={"RELAION_LICENSE": "cc-by-4.0"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    v2 = space.latest
    assert v2 != v1
    for inside in ("research/good-1.parquet", LISTED):
        shared = {(space.releases / v / inside).stat().st_ino for v in (v1, v2)}
        assert shared == {(space.work / inside).stat().st_ino}
    return space, v1, v2


def test_damage_to_a_file_two_releases_share_is_named_by_verify_of_each(two_releases):
    space, v1, v2 = two_releases
    target = space.releases / v1 / "research" / "good-1.parquet"
    before = target.stat()
    os.chmod(target, 0o644)
    with open(target, "r+b") as handle:  # one byte flipped in the middle, as a bad disk or a careless root would
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    for version in (v1, v2):
        checked = relaion("verify", space.releases / version)
        assert checked.returncode == 1, version
        assert "MISMATCH research/good-1.parquet: sha256" in checked.stdout, (version, checked.stdout)


def test_going_back_to_a_release_whose_file_was_damaged_never_moves_latest_to_it(space):
    """A second release with another safe threshold (research-safe made again: the first release's is its own
    file now), then back to the first threshold: that version exists, so it is not assembled again. `latest`
    must not move from the sound second release to the first while a file of it holds a listed row."""
    v1 = space.latest
    ran = space.run(env={"RELAION_SAFE_THRESHOLD": "0.25"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    v2 = space.latest
    assert (space.releases / v1 / LISTED).stat().st_nlink == 1
    tamper(space.releases / v1 / LISTED, space.shards / "good-1.parquet", in_place=True)
    assert verified(space.releases / v2, space.lists).returncode == 0

    ran = space.run()

    checked = verified(space.releases, space.lists)
    assert checked.returncode == 0 or (ran.returncode != 0 and space.latest == v2), (
        f"run exited {ran.returncode}; latest {space.latest} (v1 {v1}, v2 {v2}): {checked.stdout}"
    )


# 6. S3: the release in another bucket than the work, shard names that look like patterns.


@pytest.fixture
def two_buckets(tmp_path, monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    environment = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "relaion-test",
                   "AWS_SECRET_ACCESS_KEY": "relaion-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
                   "DAGSTER_HOME": str(tmp_path / "unused"), "RELAION_DAGSTER_HOME": str(tmp_path / "dagster"),
                   **ENV}  # fmt: skip
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
    tag = uuid.uuid4().hex[:8]
    for bucket in (f"work-{tag}", f"releases-{tag}"):
        fs.mkdir(bucket)
    yield fs, f"s3://work-{tag}/w[o]rk", f"s3://releases-{tag}/re-laion"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


PATTERN_NAMES = ["br[a]cket", "c{a,b}"]  # every pattern character on S3: tests/core/test_names.py


def test_a_release_in_another_bucket_with_pattern_names_holds_the_work_files_bytes_and_verifies(
    tmp_path, two_buckets, capsys
):
    fs, work, releases = two_buckets
    ws = make(tmp_path / "ws", names=PATTERN_NAMES)
    flags = ["--shards", ws.shards, "--blocklists", ws.lists, "--sidecars", tmp_path / "sidecars", "--work", work,
             "--release", releases]  # fmt: skip

    assert main(["run", *map(str, flags)]) == 0, capsys.readouterr()

    published = release.resolve(releases)
    manifest = storage.read_json(f"{published}/manifest.json")
    assert sorted(manifest["shards"]) == sorted(PATTERN_NAMES) and manifest["held_back"] == {}
    for name in PATTERN_NAMES:
        for variant in ("research", "research-safe"):
            inside = f"{variant}/{name}.parquet"
            data = fs.cat_file(storage.filesystem(f"{published}/{inside}")[1])
            assert hashlib.sha256(data).hexdigest() == manifest["shards"][name]["files"][variant]["sha256"]
            assert data == fs.cat_file(storage.filesystem(f"{work}/{inside}")[1])
    capsys.readouterr()
    assert main(["verify", releases, "--blocklists", str(ws.lists)]) == 0, capsys.readouterr()
    assert main(["run", *map(str, flags)]) == 0, capsys.readouterr()
    assert release.resolve(releases) == published


# 7. A work file replaced while the release links it (a shard run of another process: the release holds no
# shard's lock). The os.link below stands for that process winning the race between the digest and the link.


def test_a_work_file_replaced_while_the_release_links_it_is_never_published_under_the_old_digest(tmp_path, monkeypatch):
    ws = make(tmp_path / "ws")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    settings = Settings(shards=str(ws.shards), blocklists=str(ws.lists), sidecars=str(tmp_path / "sidecars"),
                        work=str(ws.work), release=str(ws.releases), removal_list_max_match_share=1.0)  # fmt: skip
    link, raced = os.link, []

    def racing(source, destination, *args, **kwargs):
        if str(source) == str(ws.work / LISTED) and not raced:
            raced.append(source)
            tamper(Path(source), ws.shards / "good-1.parquet", in_place=False)
        return link(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "link", racing)
    first = run_all(settings, progress=lambda line: None)
    monkeypatch.setattr(os, "link", link)
    assert raced
    assert first.release is None and not first.ok, "nothing is published"
    assert "shard 'good-1': its research-safe file changed since its stage wrote it" in first.error
    assert not (ws.releases / "latest").exists()

    second = run_all(settings, progress=lambda line: None)
    assert second.ok, second.error
    _, problems = release.verify(settings.release, blocklist_location=settings.blocklists)
    assert problems == [], "the next run made the shard again and published it as it should be"


# 8. The blocklist sensor: a shard with a run still to start is left to that run, once.


@pytest.fixture
def sensed(tmp_path):
    """Two shards processed against the first list version; a second version lists a row both hold."""
    ws = make(tmp_path / "ws")
    settings = Settings(shards=str(ws.shards), blocklists=str(ws.lists), sidecars=str(tmp_path / "sidecars"),
                        work=str(ws.work), release=str(ws.releases))  # fmt: skip
    instance = instance_for(settings)
    instance.add_dynamic_partitions(shard_partitions.name, ["good-1", "good-2"])
    defs = build_definitions(settings)
    assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success
    for name in ("good-1", "good-2"):
        assert defs.resolve_job_def("shard_job").execute_in_process(partition_key=name, instance=instance).success
    with (ws.lists / "iwf" / "url_sha256.txt").open("a") as handle:
        handle.write(hashlib.sha256(b"fine.example/7.jpg").hexdigest() + "\n")
    yield settings, instance, defs
    instance.dispose()


def tick(defs, instance, cursor=None):
    """One evaluation of blocklist_version_sensor as the daemon makes it: from the cursor of the last one."""
    sensor = defs.resolve_sensor_def("blocklist_version_sensor")
    with (
        dg.partition_loading_context(dynamic_partitions_store=instance),
        dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=defs.resources, repository_def=defs.get_repository_def()
        ) as context,
    ):
        result = sensor.evaluate_tick(context)
    return sorted(r.partition_key for r in result.run_requests), result.cursor


def test_a_run_started_before_the_new_list_version_still_gets_a_rematch(sensed):
    settings, instance, defs = sensed
    shard_job = defs.resolve_job_def("shard_job")
    instance.create_run_for_job(shard_job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "good-1"})
    assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success
    assert status.needs_matching(settings, ["good-1", "good-2"]) == ["good-1", "good-2"]

    requests = sensor_requests(defs, instance, "blocklist_version_sensor")
    assert sorted(r.partition_key for r in requests) == ["good-1", "good-2"]


def test_a_shard_left_to_a_queued_run_that_never_starts_is_rematched_at_a_later_tick(sensed):
    """The queued run is cancelled (or fails to launch) after the tick that left the shard to it: the
    shard still matched against the older version must be asked for, or the newly listed row stays published."""
    settings, instance, defs = sensed
    shard_job = defs.resolve_job_def("shard_job")
    queued = instance.create_run_for_job(
        shard_job, status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/partition": "good-1"}
    )  # waiting for its launch or a free slot of the queue
    assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success
    requested, cursor = tick(defs, instance)
    assert requested == ["good-2"] and cursor is not None

    instance.report_run_canceled(queued)
    requested, cursor = tick(defs, instance, cursor)
    requested += tick(defs, instance, cursor)[0]

    assert "good-1" in status.needs_matching(settings, ["good-1", "good-2"])
    assert requested == ["good-1"]
