"""Fail closed, through the CLI as an operator runs it: a run that cannot match a shard against every list
entry that applies to it holds the shard back and says why; Ctrl-C and SIGTERM stop a run before it
publishes; a mistyped flag, variable or value stops the command before any work, naming what was wrong."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from relaion_pipeline.demo_data import demo

IMAGE_KINDS = ("image_md5", "image_sha1", "image_sha256", "pdq")


def relaion(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=env, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed")
    planted = demo.generate(root / "in", shards=2, rows=1500, seed=11)
    return root / "in", planted


def _layout(inputs: Path, out: Path, sidecars: str | None = None) -> list[str]:
    return [
        "--shards", inputs / "shards", "--blocklists", inputs / "blocklists",
        "--sidecars", sidecars or inputs / "sidecars", "--work", out / "work", "--release", out / "releases",
    ]  # fmt: skip


def _published_keys(out: Path) -> set[str]:
    """Row keys of every published shard file of every release under `out`, hidden folders included."""
    keys = set()
    for path in (out / "releases").rglob("*.parquet"):
        if path.parent.name in ("research", "research-safe") or "research" in path.relative_to(out).parts:
            table = pq.read_table(path)
            column = next(c for c in ("key", "SAMPLE_ID", "hash", "__index_level_0__") if c in table.column_names)
            keys |= {str(k) for k in table.column(column).to_pylist()}
    return keys


def _image_keys(planted: dict) -> set[str]:
    return {str(k) for name, kinds in planted.items() if not name.startswith("_") for kind in IMAGE_KINDS
            for k in kinds.get(kind, [])}  # fmt: skip


def test_a_mistyped_sidecar_location_holds_every_shard_back_naming_the_sidecar(inputs, tmp_path):
    source, planted = inputs
    wrong = str(source / "sidecar")  # the operator's typo: sidecars
    ran = relaion("run", *_layout(source, tmp_path, sidecars=wrong))
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert f"the sidecar location {wrong} does not exist" in ran.stdout
    assert "skip_image_matching" in ran.stdout, "the message says how to proceed on purpose"
    assert "Traceback" not in ran.stdout + ran.stderr, "one line per failure without --debug"
    assert _image_keys(planted) and not (_published_keys(tmp_path) & _image_keys(planted))


def test_a_shard_without_its_sidecar_is_held_back_and_the_others_are_matched(inputs, tmp_path):
    source, planted = inputs
    sidecars = tmp_path / "sidecars"
    names = sorted(n for n in planted if not n.startswith("_"))
    for name in names[1:]:  # the first shard's images were never hashed
        (sidecars / name).parent.mkdir(parents=True, exist_ok=True)
        (sidecars / f"{name}.parquet").write_bytes((source / "sidecars" / f"{name}.parquet").read_bytes())
    ran = relaion("run", *_layout(source, tmp_path, sidecars=str(sidecars)))
    assert ran.returncode == 1
    missing = f"{sidecars}/{names[0]}.parquet"
    assert f"its image-hash sidecar {missing} does not exist" in ran.stdout
    removals = json.loads((tmp_path / "work" / "stats" / "removals" / f"{names[1]}.json").read_text())
    assert removals["image_matching"] == "required" and removals["image_hash_rows"] > 0
    assert not (tmp_path / "work" / "stats" / "removals" / f"{names[0]}.json").exists()
    assert not (_published_keys(tmp_path) & _image_keys(planted))


def test_skipping_image_matching_is_an_explicit_recorded_choice(inputs, tmp_path):
    source, planted = inputs
    ran = relaion("run", *_layout(source, tmp_path, sidecars=str(tmp_path / "none")), "--skip-image-matching")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in (n for n in planted if not n.startswith("_")):
        stats = json.loads((tmp_path / "work" / "stats" / "removals" / f"{name}.json").read_text())
        assert stats["image_matching"] == "skipped" and stats["image_hash_rows"] == 0
        assert set(stats["removed_by_kind"]) == {"domain", "keyword", "url_md5", "url_sha256"}
    again = relaion("run", *_layout(source, tmp_path, sidecars=str(tmp_path / "none")))
    assert again.returncode == 1, "without the setting the same shards are matched again, and held back"
    assert "does not exist" in again.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_shard_stops_the_run_before_anything_is_published(tmp_path, signum):
    demo.generate(tmp_path / "in", shards=2, rows=60_000, seed=4)
    process = subprocess.Popen(
        [sys.executable, "-m", "relaion_pipeline.cli", "run", *map(str, _layout(tmp_path / "in", tmp_path))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stdout:  # the blocklist is built: the first shard's Dagster steps run next
        if line.startswith("blocklist "):
            break
    time.sleep(0.5)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, out + err
    assert err.strip().splitlines() == ["interrupted"], err
    assert "release " not in out
    releases = tmp_path / "releases"
    assert not releases.exists() or not any(releases.iterdir()), "no release, not even a hidden one"
    partial = [p for p in (tmp_path / "work").rglob("*") if p.name.startswith(".tmp-")]
    assert not partial


def test_mistyped_flags_values_and_variables_stop_before_any_work(tmp_path):
    layout = _layout(tmp_path / "in", tmp_path)
    abbreviated = relaion("run", "--shard", tmp_path / "in")
    assert abbreviated.returncode == 2
    assert "usage: relaion run" in abbreviated.stderr and "unrecognized arguments: --shard" in abbreviated.stderr
    value = relaion("run", *layout, "--safe-threshold", "abc")
    assert value.returncode == 2 and "argument --safe-threshold: 'abc': expected a number" in value.stderr
    for variable, raw, expected in (
        ("RELAION_SAFE_THRESHOLD", "abc", "expected a number"),
        ("RELAION_DUCKDB_MEMORY_LIMIT", "lots", "expected a size such as 512MB"),
        ("RELAION_DUCKDB_THREADS", "-1", "expected 0 (the CPUs this process may use) or more"),
        ("RELAION_SKIP_IMAGE_MATCHING", "maybe", "expected one of 1, true"),
    ):
        ran = relaion("run", *layout, env=dict(os.environ, **{variable: raw}))
        assert ran.returncode == 2, variable
        assert ran.stderr.strip() == f"error: {variable}={raw!r}: {expected}" or (
            ran.stderr.startswith(f"error: {variable}={raw!r}: {expected}")
        ), ran.stderr
    (tmp_path / "binary.txt").write_bytes(b"csam\0\x01")
    for keywords, expected in (
        (tmp_path / "missing.txt", "does not exist, expected a text file with one keyword per line"),
        (tmp_path / "binary.txt", "holds binary data, expected UTF-8 text with one keyword per line"),
    ):
        ran = relaion("run", *layout, "--keywords", keywords)
        assert ran.returncode == 2
        assert ran.stderr.strip() == (
            f"error: keyword file {keywords} (setting keywords: --keywords, RELAION_KEYWORDS): {expected}"
        )
    assert not (tmp_path / "work").exists(), "nothing was started"


def test_every_setting_is_a_flag_and_a_variable_in_help():
    from dataclasses import fields

    from relaion_pipeline.core.settings import Settings

    shown = relaion("run", "--help").stdout
    for f in fields(Settings):
        assert f"--{f.name.replace('_', '-')}" in shown and f"RELAION_{f.name.upper()}" in shown, f.name


def test_outputs_inside_the_shard_location_are_refused_before_any_work(inputs, tmp_path):
    source, _ = inputs
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.parquet").write_bytes((source / "shards" / "joined" / "part-00000.parquet").read_bytes())
    ran = relaion("run", "--shards", data, "--blocklists", source / "blocklists", "--sidecars", source / "sidecars",
                  "--work", data / "work", "--release", data / "releases")  # fmt: skip
    assert ran.returncode == 2
    assert ran.stderr.strip() == (
        f"error: setting work ({data}/work) is inside the shard location ({data}): every *.parquet below it is"
        f" read as a shard, so these files would be taken as input; give work a location outside {data}"
    )
    assert sorted(p.name for p in data.iterdir()) == ["part.parquet"], "nothing was written"


def test_row_keys_holding_urls_never_reach_a_work_or_release_file(tmp_path):
    """A shard whose key column is the URL itself: removals, kept image hits, validation results, stats, the
    Dagster instance and the release hold no form of a removed row's URL (the keys are keyed hashes)."""
    import hashlib

    import pyarrow as pa

    listed = "http://listed-by-key.example.org/private/photo-1.jpg"
    by_image = "http://image-by-key.example.net/album/photo-2.jpg"
    urls = [listed, by_image] + [f"http://fine-{i}.example.com/p/{i}.jpg" for i in range(40)]
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"url": urls, "caption": [f"a photo {i}" for i in range(len(urls))], "key": urls,
                             "punsafe": pa.array([0.1] * len(urls), pa.float32())}), tmp_path / "shards" / "s.parquet")  # fmt: skip
    image = hashlib.md5(b"listed image bytes").hexdigest()
    (tmp_path / "sidecars").mkdir()
    md5s = [image if u == by_image else hashlib.md5(u.encode()).hexdigest() for u in urls]
    pq.write_table(pa.table({"key": urls, "md5": md5s}), tmp_path / "sidecars" / "s.parquet")
    (tmp_path / "lists" / "iwf").mkdir(parents=True)
    expression = listed.removeprefix("http://")
    (tmp_path / "lists" / "iwf" / "url_sha256.txt").write_text(hashlib.sha256(expression.encode()).hexdigest() + "\n")
    (tmp_path / "lists" / "iwf" / "image_md5.txt").write_text(image + "\n")
    layout = ["--shards", tmp_path / "shards", "--blocklists", tmp_path / "lists", "--sidecars", tmp_path / "sidecars",
              "--work", tmp_path / "work", "--release", tmp_path / "releases"]  # fmt: skip
    ran = relaion("run", *layout)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    stats = json.loads((tmp_path / "work" / "stats" / "removals" / "s.json").read_text())
    assert stats["rows_removed"] == 2 and stats["row_keys"].startswith("hmac-sha256 of column 'key'")
    removals = pq.read_table(tmp_path / "work" / "removals" / "s.parquet").to_pylist()
    assert sorted(r["row_number"] for r in removals) == [0, 1]
    assert all(r["row_key"].startswith("hmac:") and len(r["row_key"]) == 37 for r in removals)
    secrets = []
    for url in (listed, by_image):
        host, _, path = url.removeprefix("http://").partition("/")
        secrets += [url, url.removeprefix("http://"), host, path, url.replace("/", "%2F")]
    for path in [*(tmp_path / "work").rglob("*"), *(tmp_path / "releases").rglob("*"), *tmp_path.glob("*.log")]:
        if not path.is_file():
            continue
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":
            text += str(pq.read_table(path).to_pylist())
        for secret in secrets:
            assert secret not in text, f"{path.relative_to(tmp_path)} holds {secret!r}"
    assert not any(secret in ran.stdout + ran.stderr for secret in secrets)


def test_s3_endpoint_and_credential_errors_name_the_variables(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}  # fmt: skip
    layout = ["--shards", "s3://bucket/shards", "--work", tmp_path / "work", "--release", tmp_path / "releases"]
    endpoint = relaion("run", *layout, env=clean | {"AWS_ENDPOINT_URL": "localhost:9000", "AWS_ACCESS_KEY_ID": "a",
                                                     "AWS_SECRET_ACCESS_KEY": "b"})  # fmt: skip
    assert endpoint.returncode == 2
    assert endpoint.stderr.strip() == (
        "error: s3://bucket/shards: AWS_ENDPOINT_URL='localhost:9000' is not a valid endpoint, expected a URL such"
        " as http://127.0.0.1:9000 or https://s3.example.com"
    )
    nobody = relaion("run", *layout, env=clean | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert nobody.returncode == 2
    assert nobody.stderr.startswith("error: s3://bucket/shards: no S3 credentials found")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in nobody.stderr


def test_a_list_copied_in_part_or_a_source_renamed_is_not_taken_silently(inputs, tmp_path):
    """Partners delist a few entries at a time; a sync cut short or a folder renamed loses many at once, and
    would publish every row they listed. Such a version is refused until the operator accepts it."""
    import shutil

    source, planted = inputs
    lists = tmp_path / "lists"
    shutil.copytree(source / "blocklists", lists)
    layout = ["--shards", source / "shards", "--blocklists", lists, "--sidecars", source / "sidecars",
              "--work", tmp_path / "work", "--release", tmp_path / "releases"]  # fmt: skip
    assert relaion("run", *layout).returncode == 0
    latest = (tmp_path / "releases" / "latest").read_text()
    hashes = lists / "partner-a" / "hashes.csv"
    lines = hashes.read_text().splitlines()
    hashes.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # the copy stopped half way
    (lists / "hrw-privacy").rename(tmp_path / "hrw-privacy-old")  # and a folder moved away
    ran = relaion("run", *layout)
    assert ran.returncode == 1
    assert "the lists hold fewer entries than blocklist" in ran.stderr
    assert "source 'hrw-privacy'" in ran.stderr and "partner-a's url_sha256 entries" in ran.stderr
    assert (tmp_path / "releases" / "latest").read_text() == latest, "nothing published"
    accepted = relaion("run", *layout, "--allow-list-shrink")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert (tmp_path / "releases" / "latest").read_text() != latest


def test_an_input_replaced_with_the_same_size_and_modification_time_is_matched_again(tmp_path):
    """A sidecar re-synced with its times kept (`rsync -t`, `cp -p`) whose one md5 is now listed: the shard is
    matched again (the fingerprint holds the file's inode and change time, which no copy can set back), and the
    row is not published."""
    import re

    import pyarrow as pa

    same_size = dict(compression="none", use_dictionary=False, write_statistics=False)
    data = tmp_path / "d"
    demo.generate(data, shards=2, rows=500, seed=0)
    sidecar = data / "sidecars" / "plain" / "part-00001.parquet"
    pq.write_table(pq.read_table(sidecar), sidecar, **same_size)
    layout = _layout(data, tmp_path)
    assert relaion("run", *layout).returncode == 0
    listed = re.findall(r"image_md5,([0-9a-f]{32})", (data / "blocklists" / "partner-a" / "hashes.csv").read_text())
    table = pq.read_table(sidecar)
    rows = table.to_pylist()
    victim = next(r for r in rows if r["key"] and r["md5"] not in listed)
    victim["md5"] = listed[0]
    before = os.stat(sidecar)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), sidecar, **same_size)
    os.utime(sidecar, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(sidecar).st_size == before.st_size
    ran = relaion("run", *layout)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "plain/part-00001: up to date" not in ran.stdout
    latest = tmp_path / "releases" / (tmp_path / "releases" / "latest").read_text().strip()
    published = pq.read_table(latest / "research" / "plain" / "part-00001.parquet").column("SAMPLE_ID").to_pylist()
    assert int(victim["key"]) not in published and len(published) > 400


def test_a_second_run_on_the_same_work_location_fails_at_once_naming_it(inputs, tmp_path):
    import fcntl

    source, _ = inputs
    (tmp_path / "work" / "locks").mkdir(parents=True)
    with open(tmp_path / "work" / "locks" / "run.lock", "a+") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ran = relaion("run", *_layout(source, tmp_path))
    assert ran.returncode == 2
    assert ran.stderr.strip() == (
        f"error: {tmp_path / 'work'}: another relaion run is using this work location (lock"
        f" {tmp_path / 'work' / 'locks' / 'run.lock'}); wait for it to finish, or give this run a work location of"
        " its own (--work)"
    )
    assert not (tmp_path / "releases").exists()
