"""End to end through the user's entry points: `relaion demo-data`, `relaion run`, `relaion verify`."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import written

from assets.definitions import build_definitions
from relaion_pipeline.core import schemas
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import manifest as manifests
from relaion_pipeline.stages import pipeline

SHARDS, ROWS = 4, 3000


def relaion(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    made = relaion("demo-data", "--out", root / "in", "--shards", SHARDS, "--rows", ROWS, "--seed", 3)
    assert made.returncode == 0, made.stderr
    before = {p: p.read_bytes() for p in (root / "in").rglob("*") if p.is_file()}
    ran = relaion(
        "run",
        "--shards", root / "in" / "shards",
        "--blocklists", root / "in" / "blocklists",
        "--sidecars", root / "in" / "sidecars",
        "--work", root / "work",
        "--release", root / "releases",
    )  # fmt: skip
    settings = Settings.layout(root / "in", root)
    return root, ran, settings, before


def shard_names(root):
    return sorted(
        str(p.relative_to(root / "in" / "shards"))[: -len(".parquet")]
        for p in (root / "in" / "shards").rglob("*.parquet")
    )


def release_dir(root):
    return root / "releases" / (root / "releases" / "latest").read_text().strip()


def test_run_succeeds_and_reports_every_shard(demo):
    root, ran, _, _ = demo
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in shard_names(root):
        assert f"] {name}: {ROWS:,} rows in" in ran.stdout
    assert "release " in ran.stdout and "4 shards published, 0 held back" in ran.stdout


def test_removed_row_keys_are_exactly_the_planted_ones(demo):
    root, _, _, _ = demo
    planted = json.loads((root / "in" / "planted.json").read_text())
    for name in shard_names(root):
        removals = pq.read_table(root / "work" / "removals" / f"{name}.parquet").to_pylist()
        shard = root / "in" / "shards" / f"{name}.parquet"
        for kind, keys in planted[name].items():
            got = sorted({r["row_key"] for r in removals if r["kind"] == kind})
            assert got == sorted(written(shard, keys)), f"{name} {kind}"
        everything = {k for keys in planted[name].values() for k in keys}
        assert {r["row_key"] for r in removals} == set(written(shard, everything))


def test_variants_have_the_input_schema_order_and_expected_rows(demo):
    root, _, settings, _ = demo
    planted = json.loads((root / "in" / "planted.json").read_text())
    release = release_dir(root)
    for name in shard_names(root):
        source = pq.read_table(root / "in" / "shards" / f"{name}.parquet")
        roles = schemas.detect(source.schema, name)
        research = pq.read_table(release / "research" / f"{name}.parquet")
        safe = pq.read_table(release / "research-safe" / f"{name}.parquet")
        assert research.schema.equals(source.schema, check_metadata=True)
        assert safe.schema.equals(source.schema, check_metadata=True)
        removed = {k for keys in planted[name].values() for k in keys}
        keys = (
            [f"{name}:{i}" for i in range(source.num_rows)]
            if roles.key is None
            else [str(k) for k in source.column(roles.key).to_pylist()]
        )
        keep = [k not in removed for k in keys]
        assert research.equals(source.filter(keep)), f"{name}: research is the input minus the removed rows, in order"
        if roles.punsafe:
            expected = research.filter(pc.fill_null(pc.less_equal(research.column(roles.punsafe), 0.45), True))
        elif roles.nsfw:
            expected = research.filter(pc.fill_null(pc.not_equal(research.column(roles.nsfw), "NSFW"), True))
        else:
            expected = research
        assert safe.equals(expected), f"{name}: research-safe is research minus unsafe rows"


def test_manifest_describes_the_files_and_verify_checks_them(demo, tmp_path):
    root, _, _, _ = demo
    release = release_dir(root)
    manifest = json.loads((release / "manifest.json").read_text())
    assert (
        manifest["blocklist_version"]
        == json.loads((root / "work" / "blocklist" / "current.json").read_text())["version"]
    )
    assert manifest["thresholds"]["safe_threshold"] == 0.45
    for entry in manifest["shards"].values():
        for file in entry["files"].values():
            data = (release / file["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == file["sha256"]
            assert pq.ParquetFile(release / file["path"]).metadata.num_rows == file["rows"]
    ok = relaion("verify", root / "releases")
    assert ok.returncode == 0 and "OK" in ok.stdout

    copy = tmp_path / "copy"
    shutil.copytree(release, copy)
    victim = copy / next(iter(manifest["shards"].values()))["files"]["research"]["path"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    bad = relaion("verify", copy)
    assert bad.returncode == 1
    assert "sha256" in bad.stdout and str(victim.relative_to(copy)) in bad.stdout


def test_inputs_are_never_modified(demo):
    root, _, _, before = demo
    after = {p: p.read_bytes() for p in (root / "in").rglob("*") if p.is_file()}
    assert after == before


def test_rerunning_one_partition_leaves_every_other_shard_untouched(demo, monkeypatch):
    root, _, settings, _ = demo
    work = pipeline.Work(settings.work)
    names = shard_names(root)
    outputs = {
        name: [work.removals(name), work.variant("research", name), work.variant("research-safe", name)]
        for name in names
    }
    stamp = {path: (Path(path).read_bytes(), os.stat(path).st_mtime_ns) for paths in outputs.values() for path in paths}
    target = names[1]

    monkeypatch.setenv("DAGSTER_HOME", settings.dagster_home)
    with dg.DagsterInstance.get() as instance:
        job = build_definitions(settings).resolve_job_def("shard_job")
        assert job.execute_in_process(partition_key=target, instance=instance).success

    for name, paths in outputs.items():
        for path in paths:
            data, mtime = stamp[path]
            assert Path(path).read_bytes() == data, f"{path}: same bytes after the rerun"
            if name == target:
                assert os.stat(path).st_mtime_ns != mtime, f"{path}: rewritten by the rerun"
            else:
                assert os.stat(path).st_mtime_ns == mtime, f"{path}: other shards are not touched"


def test_verify_against_lists_finds_published_rows_that_a_new_list_matches(demo, tmp_path):
    root, _, _, _ = demo
    same = relaion("verify", root / "releases", "--blocklists", root / "in" / "blocklists")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no list match" in same.stdout

    lists = tmp_path / "lists"
    shutil.copytree(root / "in" / "blocklists", lists)
    release = release_dir(root)
    name = shard_names(root)[0]
    published = pq.read_table(release / "research" / f"{name}.parquet")
    url = published.column("URL" if "URL" in published.column_names else "url")[7].as_py()
    from relaion_pipeline.canonical import urls

    (lists / "new-partner").mkdir()
    (lists / "new-partner" / "url_sha256.txt").write_text(
        hashlib.sha256(urls.lookup_expressions(url)[0].encode()).hexdigest() + "\n"
    )
    found = relaion("verify", root / "releases", "--blocklists", lists)
    assert found.returncode == 1
    assert f"research/{name}.parquet: 1 rows match the lists ({{'url_sha256': 1}})" in found.stdout
    assert url not in found.stdout + found.stderr


def test_verify_finds_a_research_safe_row_that_research_does_not_hold(demo, tmp_path):
    root, _, _, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(release_dir(root), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    name = shard_names(root)[2]
    files = manifest["shards"][name]["files"]
    research = pq.read_table(copy / files["research"]["path"])
    safe = pq.read_table(copy / files["research-safe"]["path"])
    source = pq.read_table(root / "in" / "shards" / f"{name}.parquet")
    outsider = (
        source.slice(0, source.num_rows)
        .filter([k not in set(research.column(0).to_pylist()) for k in source.column(0).to_pylist()])
        .slice(0, 1)
    )
    tampered = pa.concat_tables([safe.slice(1), outsider.cast(safe.schema)])
    pq.write_table(tampered, copy / files["research-safe"]["path"])
    data = (copy / files["research-safe"]["path"]).read_bytes()
    files["research-safe"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=tampered.num_rows)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bad = relaion("verify", copy)
    assert bad.returncode == 1
    assert "is not the digest of its content" in bad.stdout and "the manifest was edited" in bad.stdout

    del manifest["version"]  # a forger who also recomputes the version: the data itself gives it away
    (copy / "manifest.json").write_text(json.dumps(manifests.seal(manifest)))
    bad = relaion("verify", copy)
    assert bad.returncode == 1
    assert f"{name}: 1 research-safe rows are not in research" in bad.stdout
