"""The whole pipeline against a real S3 protocol server on 127.0.0.1 (moto's ThreadedMotoServer), bucket to bucket."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import written
from moto.server import ThreadedMotoServer

from assets.runner import run_all
from relaion_pipeline.core import shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import release


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The test server's endpoint and credentials in the environment, as a user's shell would have them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", s3_server)
        patch.setenv("AWS_ACCESS_KEY_ID", "relaion-test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "relaion-test-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture
def s3(s3_env):
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def bucket_run(s3_env, tmp_path_factory):
    """One run of the whole pipeline from a bucket of inputs to buckets of work and releases, that the tests
    below read (and one runs again)."""
    root = tmp_path_factory.mktemp("bucket")
    s3fs.S3FileSystem.clear_instance_cache()
    s3 = s3fs.S3FileSystem(use_listings_cache=False)
    planted = demo.generate(root / "in", shards=4, rows=600, seed=5)
    for bucket in ("laion", "relaion-work", "relaion-releases"):
        s3.mkdir(bucket)
    s3.put(str(root / "in") + "/", "laion/input/", recursive=True)
    settings = Settings(
        shards="s3://laion/input/shards",
        blocklists="s3://laion/input/blocklists",
        sidecars="s3://laion/input/sidecars",
        work="s3://relaion-work/run-1",
        release="s3://relaion-releases/re-laion",
        dagster_home=str(root / "dagster"),
    )
    discovered = [s.name for s in shards.discover(settings.shards)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "unused"))
        summary = run_all(settings, progress=lambda line: None)
    return root, planted, settings, discovered, summary


def test_pipeline_runs_bucket_to_bucket(bucket_run, s3):
    root, planted, settings, discovered, summary = bucket_run
    assert discovered == sorted(k for k in planted if not k.startswith("_"))
    assert summary.ok, [s.error for s in summary.shards]
    manifest, problems = release.verify("s3://relaion-releases/re-laion")
    assert problems == []
    assert manifest["totals"]["shards"] == 4
    latest = s3.cat_file("relaion-releases/re-laion/latest").decode().strip()
    assert latest == manifest["version"]
    for name, kinds in planted.items():
        if name.startswith("_"):
            continue
        removals = storage.read_table(f"s3://relaion-work/run-1/removals/{name}.parquet").to_pylist()
        everything = {k for keys in kinds.values() for k in keys}
        assert {r["row_key"] for r in removals} == set(written(f"{settings.shards}/{name}.parquet", everything))
        with s3.open(f"relaion-releases/re-laion/{latest}/research/{name}.parquet", "rb") as handle:
            published = pq.read_table(handle)
        source = pq.read_table(root / "in" / "shards" / f"{name}.parquet")
        assert published.schema.equals(source.schema, check_metadata=True)
        assert published.num_rows == source.num_rows - len({r["row_number"] for r in removals})
    assert not list((root / "in").glob("**/.tmp-*")), "nothing temporary left in the input"


def test_publishing_the_same_inputs_again_is_idempotent(bucket_run, s3, monkeypatch):
    root, _, settings, _, first = bucket_run
    monkeypatch.setenv("DAGSTER_HOME", str(root / "unused"))
    objects = {p: s3.info(p)["ETag"] for p in s3.find("relaion-releases/re-laion")}
    assert len(objects) > 10
    second = run_all(settings, progress=lambda line: None)
    assert first.ok and second.ok
    assert first.release["version"] == second.release["version"]
    assert {p: s3.info(p)["ETag"] for p in s3.find("relaion-releases/re-laion")} == objects
    manifest = json.loads(s3.cat_file(f"relaion-releases/re-laion/{first.release['version']}/manifest.json"))
    assert manifest["totals"]["shards"] == 4


def test_missing_bucket_is_a_clear_error(s3):
    with pytest.raises(shards.ShardError, match=r"s3://no-such-bucket/shards: shard location does not exist"):
        shards.discover("s3://no-such-bucket/shards")


def test_clean_and_verify_work_on_the_bucket(bucket_run, s3):
    from relaion_pipeline.publishing import clean

    settings = bucket_run[2]
    manifest, problems = release.verify(settings.release, blocklist_location=settings.blocklists)
    assert problems == []
    clean.clean(settings.release, settings.shards, "s3://relaion-work/old-copy-cleaned", by="difference",
                progress=lambda line: None)  # fmt: skip
    for name, entry in manifest["shards"].items():
        cleaned = storage.read_table(f"s3://relaion-work/old-copy-cleaned/{name}.parquet")
        published = storage.read_table(
            f"{settings.release}/{manifest['version']}/{entry['files']['research-safe']['path']}"
        )
        assert cleaned.equals(published)
    assert json.loads(s3.cat_file("relaion-work/old-copy-cleaned/clean-report.json"))["rows_removed"] > 0


def test_more_than_a_thousand_shards_are_all_discovered(s3):
    s3.mkdir("many")
    s3.pipe({f"many/shards/part-{i:05d}.parquet": b"PAR1" for i in range(1_050)})  # uploaded concurrently
    found = shards.discover("s3://many/shards")
    assert len(found) == 1_050
    assert found[-1].name == "part-01049" and found[-1].path == "s3://many/shards/part-01049.parquet"


def test_files_above_the_multipart_threshold_round_trip(s3, tmp_path, monkeypatch):
    import fsspec
    import numpy as np
    import pyarrow as pa

    monkeypatch.setitem(fsspec.config.conf, "s3", {"default_block_size": 5 * 2**20})
    s3fs.S3FileSystem.clear_instance_cache()
    s3.mkdir("big")
    rng = np.random.default_rng(1)
    table = pa.table(
        {"URL": [f"http://h.example/{x}" for x in rng.integers(0, 2**62, 400_000)], "TEXT": ["t"] * 400_000}
    )
    local = tmp_path / "big.parquet"
    pq.write_table(table, local, compression="none")
    assert local.stat().st_size > 12 * 2**20
    storage.copy(str(local), "s3://big/shards/big.parquet")
    storage.copy("s3://big/shards/big.parquet", "s3://big/copy/big.parquet")
    size, digest = storage.size_and_sha256("s3://big/copy/big.parquet")
    assert (size, digest) == storage.size_and_sha256(str(local))
    assert "-" in s3.info("big/copy/big.parquet")["ETag"], "uploaded in several parts"
    assert storage.read_table("s3://big/copy/big.parquet").equals(table)


def test_wrong_credentials_give_one_clear_line_without_the_secret(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import ThreadedMotoServer as S; import time; s = S(ip_address='127.0.0.1', port={port}); s.start(); time.sleep(120)"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        secret = "wrong-secret-value-1234"
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="AKIAWRONG",
                   AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
        ran = subprocess.run(
            [sys.executable, "-m", "relaion_pipeline.cli", "run", "--shards", "s3://locked/shards",
             "--blocklists", "s3://locked/lists", "--work", str(tmp_path / "work")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.kill()
    assert ran.returncode == 2
    assert ran.stderr.strip().startswith("error: s3://locked/shards: access denied")
    assert "check the credentials" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert secret not in ran.stderr + ran.stdout


def test_s3_settings_can_come_from_the_dagster_resource_and_never_reach_the_logs(s3_server, tmp_path, monkeypatch):
    import dagster as dg
    import fsspec

    from assets.definitions import build_definitions
    from assets.resources import S3Storage

    for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    secret = "resource-secret-5678"
    s3fs.S3FileSystem.clear_instance_cache()
    uploader = s3fs.S3FileSystem(key="resource-key", secret=secret, client_kwargs={"endpoint_url": s3_server})
    demo.generate(tmp_path / "in", shards=1, rows=300, seed=9)
    uploader.mkdir("resource")
    uploader.put(str(tmp_path / "in") + "/", "resource/input/", recursive=True)
    settings = Settings.layout("s3://resource/input", "s3://resource")
    s3_resource = S3Storage(
        endpoint_url=s3_server, region="us-east-1", access_key_id="resource-key", secret_access_key=secret
    )
    defs = build_definitions(settings, s3_resource)
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("blocklist_job").execute_in_process(instance=instance).success
        instance.add_dynamic_partitions("shards", ["joined/part-00000"])
        shard_run = defs.resolve_job_def("shard_job").execute_in_process(
            partition_key="joined/part-00000", instance=instance
        )
        assert shard_run.success
        logged = ""
        for run in instance.get_runs():
            logged += "".join(str(entry) for entry in instance.all_logs(run.run_id))
    assert "joined/part-00000" in logged
    assert secret not in logged
    s3fs.S3FileSystem.clear_instance_cache()


def test_hash_images_reads_downloads_from_a_bucket_and_writes_sidecars_there(s3, tmp_path):
    from relaion_pipeline.demo_data import demo_images
    from relaion_pipeline.match import images

    urls = [f"http://pics{i}.example.org/{i}.jpg" for i in range(12)]
    files = [demo_images.encode(demo_images.picture(i)) for i in range(12)]
    demo_images.write_downloads(tmp_path / "downloads", list(zip(urls, files, strict=True)), per_tar=5)
    (tmp_path / "shards").mkdir()
    pq.write_table(
        pa.table({"key": [f"r{i}" for i in range(12)], "url": urls, "caption": ["a"] * 12}),
        tmp_path / "shards" / "s.parquet",
    )
    s3.mkdir("images")
    s3.put(str(tmp_path / "downloads") + "/", "images/downloads/", recursive=True)
    s3.put(str(tmp_path / "shards") + "/", "images/shards/", recursive=True)

    results = images.hash_tars("s3://images/downloads", "s3://images/sidecars", workers=2, progress=lambda _: None)
    settings = Settings(shards="s3://images/shards", work=str(tmp_path / "work"))
    written = images.write_sidecars(settings, "s3://images/sidecars", progress=lambda _: None)

    assert [r.images for r in results] == [5, 5, 2] and written == {"s": 12}
    with s3.open("images/sidecars/s.parquet", "rb") as handle:
        sidecar = pq.read_table(handle).to_pylist()
    assert [r["key"] for r in sidecar] == [f"r{i}" for i in range(12)]
    assert [r["sha256"] for r in sidecar] == [hashlib.sha256(f).hexdigest() for f in files]
    assert not [p for p in s3.find("images/sidecars") if ".tmp" in p], "nothing temporary left in the bucket"
