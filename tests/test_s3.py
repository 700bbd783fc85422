"""The whole pipeline against a real S3 protocol server on 127.0.0.1 (moto's ThreadedMotoServer), bucket to bucket."""

import json

import pyarrow.parquet as pq
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from assets.runner import run_all
from relaion_pipeline import demo, release, shards, storage
from relaion_pipeline.settings import Settings


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "relaion-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "relaion-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def test_pipeline_runs_bucket_to_bucket(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    planted = demo.generate(tmp_path / "in", shards=4, rows=600, seed=5)
    for bucket in ("laion", "relaion-work", "relaion-releases"):
        s3.mkdir(bucket)
    s3.put(str(tmp_path / "in") + "/", "laion/input/", recursive=True)
    settings = Settings(
        shards="s3://laion/input/shards",
        blocklists="s3://laion/input/blocklists",
        sidecars="s3://laion/input/sidecars",
        work="s3://relaion-work/run-1",
        release="s3://relaion-releases/re-laion",
        dagster_home=str(tmp_path / "dagster"),
    )
    assert [s.name for s in shards.discover(settings.shards)] == sorted(k for k in planted if not k.startswith("_"))

    summary = run_all(settings, progress=lambda line: None)

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
        assert {r["row_key"] for r in removals} == {k for keys in kinds.values() for k in keys}
        with s3.open(f"relaion-releases/re-laion/{latest}/research/{name}.parquet", "rb") as handle:
            published = pq.read_table(handle)
        source = pq.read_table(tmp_path / "in" / "shards" / f"{name}.parquet")
        assert published.schema.equals(source.schema, check_metadata=True)
        assert published.num_rows == source.num_rows - len({r["row_number"] for r in removals})
    assert not list((tmp_path / "in").glob("**/.tmp-*")), "nothing temporary left in the input"


def test_publishing_the_same_inputs_again_is_idempotent(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    demo.generate(tmp_path / "in", shards=2, rows=300, seed=6)
    s3.mkdir("again")
    s3.put(str(tmp_path / "in") + "/", "again/input/", recursive=True)
    settings = Settings(
        shards="s3://again/input/shards",
        blocklists="s3://again/input/blocklists",
        sidecars="s3://again/input/sidecars",
        work="s3://again/work",
        release="s3://again/releases",
        dagster_home=str(tmp_path / "dagster"),
    )
    first = run_all(settings, progress=lambda line: None)
    objects = {p: s3.info(p)["ETag"] for p in s3.find("again/releases")}
    second = run_all(settings, progress=lambda line: None)
    assert first.ok and second.ok
    assert first.release["version"] == second.release["version"]
    assert {p: s3.info(p)["ETag"] for p in s3.find("again/releases")} == objects
    manifest = json.loads(s3.cat_file(f"again/releases/{first.release['version']}/manifest.json"))
    assert manifest["totals"]["shards"] == 2


def test_missing_bucket_is_a_clear_error(s3):
    with pytest.raises(shards.ShardError, match=r"s3://no-such-bucket/shards: shard location does not exist"):
        shards.discover("s3://no-such-bucket/shards")
