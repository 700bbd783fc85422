"""Releases that cannot lie and a `latest` that never gets worse, each as the operator met it, through the CLI.

One run publishes a release of two shards (`good-1`, `good-2`: 200 rows each plus one listed row, the removal
list published); each test works on its own copy of that workspace.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BLOCKED_URL

from relaion_pipeline import status
from relaion_pipeline.cli import main
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import manifest as manifests

ROWS = [(f"http://fine.example/{i}.jpg", f"a picture {i}", (i % 10) / 10) for i in range(200)] + [
    (BLOCKED_URL, "secret caption", 0.1)
]
UNSAFE = sum(1 for _, _, score in ROWS if score > 0.45)  # rows research-safe leaves out, per shard


class Workspace:
    """Inputs, work and releases of one pipeline under `root`, run through `relaion` itself."""

    def __init__(self, root: Path):
        self.root = root
        self.shards, self.releases = root / "shards", root / "releases"

    def run(self, *extra: str) -> int:
        return main(
            ["run", "--shards", str(self.shards), "--blocklists", str(self.root / "lists"),
             "--sidecars", str(self.root / "sidecars"), "--work", str(self.root / "work"),
             "--release", str(self.releases), *extra]
        )  # fmt: skip

    @property
    def latest(self) -> str:
        return (self.releases / "latest").read_text().strip()

    def manifest(self, version: str | None = None) -> dict:
        return json.loads((self.releases / (version or self.latest) / "manifest.json").read_text())


def _make(root: Path, shard_names=("good-1", "good-2")) -> Workspace:
    space = Workspace(root)
    space.shards.mkdir(parents=True)
    urls, captions, scores = zip(*ROWS, strict=True)
    for name in shard_names:
        table = pa.table(
            {
                "url": list(urls),
                "caption": list(captions),
                "key": [f"{name}-{i}" for i in range(len(ROWS))],
                "punsafe": pa.array(scores, pa.float32()),
            }
        )
        pq.write_table(table, space.shards / f"{name}.parquet")
    (root / "lists" / "iwf").mkdir(parents=True)
    expression = BLOCKED_URL.removeprefix("http://")
    (root / "lists" / "iwf" / "url_sha256.txt").write_text(hashlib.sha256(expression.encode()).hexdigest() + "\n")
    return space


@pytest.fixture(autouse=True)
def _environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # `relaion run` points it at the work folder
    monkeypatch.setenv("RELAION_REMOVAL_LIST_MAX_MATCH_SHARE", "1.0")  # publish the removal list


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "unused"))
        patch.setenv("RELAION_REMOVAL_LIST_MAX_MATCH_SHARE", "1.0")
        space = _make(root)
        assert space.run() == 0
    return root


@pytest.fixture
def space(published, tmp_path) -> Workspace:
    """A copy of the published workspace (modification times kept: its shards are up to date)."""
    shutil.copytree(published, tmp_path / "ws", symlinks=True)
    return Workspace(tmp_path / "ws")


def _reseal(folder: Path, manifest: dict) -> None:
    """Write `manifest` with the version its content digests to: a forger who knows the rule."""
    content = {k: v for k, v in manifest.items() if k != "version"}
    (folder / "manifest.json").write_text(json.dumps(manifests.seal(content)))


# 4. An edited manifest passes verify.


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["thresholds"].update(safe_threshold=0.9),
        lambda m: m.update(blocklist_version="0" * 16),
        lambda m: m["totals"].update(rows_research=m["totals"]["rows_research"] + 1),
        lambda m: m["held_back"].update({"good-3": "failed checks"}),
        lambda m: m["settings"].update(license="cc0-1.0"),
        lambda m: m["documents"]["removal-list.parquet"].update(bytes=1),
    ],
    ids=["thresholds", "blocklist_version", "totals", "held_back", "license", "documents"],
)
def test_an_edited_manifest_fails_verify(published, tmp_path, capsys, edit):
    source = Workspace(published)
    copy = tmp_path / "copy"
    shutil.copytree(source.releases / source.latest, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))

    assert main(["verify", str(copy)]) == 1
    assert (
        f"MISMATCH manifest.json: version '{source.latest}' is not the digest of its content" in capsys.readouterr().out
    )


def test_verify_through_latest_says_which_version_it_checked(published, capsys):
    space = Workspace(published)
    assert main(["verify", str(space.releases)]) == 0
    out = capsys.readouterr().out
    assert f"release {space.latest}: OK (2 shards, 4 files;" in out
    assert out.rstrip().endswith(f"checked {space.releases / space.latest}")


def test_verify_checks_research_safe_rows_against_the_recorded_threshold(published, tmp_path, capsys):
    space = Workspace(published)
    copy = tmp_path / "copy"
    shutil.copytree(space.releases / space.latest, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shutil.copy(copy / "research" / "good-1.parquet", copy / "research-safe" / "good-1.parquet")  # unsafe rows too
    safe = manifest["shards"]["good-1"]["files"]["research-safe"]
    data = (copy / "research-safe" / "good-1.parquet").read_bytes()
    safe.update(rows=len(ROWS) - 1, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["totals"]["rows_research_safe"] += UNSAFE
    _reseal(copy, manifest)

    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH research-safe/good-1.parquet: {UNSAFE} rows above the recorded safe threshold 0.45" in out
    assert "digest" not in out, "the forger's manifest is consistent: the data itself gives it away"


UNLISTED = (
    "research/good-1-extra.parquet",
    "research-unfiltered/good-1.parquet",
    "extra.parquet",
    "research/good-1.PARQUET",
    "research/good-1.parq",
    "research/good-1.parquet.tmp",
)  # parquet files and near-names under a release that its manifest does not list


def test_verify_rejects_parquet_files_the_manifest_does_not_list(published, tmp_path, capsys):
    space = Workspace(published)
    copy = tmp_path / "copy"
    shutil.copytree(space.releases / space.latest, copy)
    extra = pq.read_table(copy / "research" / "good-1.parquet")
    for path in UNLISTED:
        (copy / path).parent.mkdir(exist_ok=True)
        pq.write_table(extra, copy / path)

    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    for path in UNLISTED:
        assert f"MISMATCH {path}: file not listed in the manifest" in out


@pytest.mark.parametrize(
    ("latest", "message"),
    [
        (b"../../elsewhere\n", "'../../elsewhere' is not a release version; expected 16 hex digits"),
        (b"", "empty is not a release version; expected 16 hex digits"),
        (b"\xff\xfe\x00\x01binary", "not text; expected the name of a release version"),
    ],
    ids=["outside", "empty", "binary"],
)
def test_a_latest_that_names_no_version_inside_the_location_is_refused(published, tmp_path, capsys, latest, message):
    releases = tmp_path / "releases"
    shutil.copytree(Workspace(published).releases, releases)
    (releases / "latest").write_bytes(latest)

    assert main(["verify", str(releases)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {releases / 'latest'}: {message}")


def test_a_latest_that_is_a_folder_or_a_mistyped_release_is_named(published, tmp_path, capsys):
    releases = tmp_path / "releases"
    shutil.copytree(Workspace(published).releases, releases)
    (releases / "latest").unlink()
    (releases / "latest").mkdir()
    assert main(["verify", str(releases)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {releases / 'latest'}: a folder; expected a file naming")

    assert main(["verify", str(tmp_path / "relases")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'relases'}: does not exist; expected a release")


def test_a_manifest_that_is_not_a_json_object_is_named(published, tmp_path, capsys):
    space = Workspace(published)
    copy = tmp_path / "copy"
    shutil.copytree(space.releases / space.latest, copy)
    (copy / "manifest.json").write_text("[1, 2]\n")

    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {copy / 'manifest.json'}: holds a JSON list, expected a JSON object (a release manifest)\n"


# 5. `clean` trusts an unverified removal list.


def _clean(space: Workspace, output: Path, *extra: str, input: Path | None = None) -> int:
    return main(["clean", "--release", str(space.releases), "--input", str(input or space.shards),
                 "--output", str(output), *extra])  # fmt: skip


def test_clean_refuses_a_shortened_removal_list(space, tmp_path, capsys):
    removal_list = space.releases / space.latest / "removal-list.parquet"
    listed = pq.read_table(removal_list)
    assert listed.num_rows == UNSAFE + 1, "positive control: every unsafe row and the listed one"
    pq.write_table(listed.slice(0, 10), removal_list)

    assert _clean(space, tmp_path / "cleaned") == 1
    assert (
        "removal-list.parquet: size or sha256 does not match the manifest (check it with relaion verify)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "cleaned").exists(), "nothing written"


def test_clean_with_the_release_as_published_removes_every_listed_row(space, tmp_path, capsys):
    assert _clean(space, tmp_path / "cleaned") == 0
    report = json.loads((tmp_path / "cleaned" / "clean-report.json").read_text())
    assert report["rows_removed"] == 2 * (UNSAFE + 1)
    for name in ("good-1", "good-2"):
        cleaned = pq.read_table(tmp_path / "cleaned" / f"{name}.parquet")
        assert cleaned.equals(pq.read_table(space.releases / space.latest / "research-safe" / f"{name}.parquet"))


def test_clean_refuses_an_edited_manifest(space, tmp_path, capsys):
    manifest = space.manifest()
    manifest["removal_list"]["keys"] = 10
    (space.releases / space.latest / "manifest.json").write_text(json.dumps(manifest))

    assert _clean(space, tmp_path / "cleaned") == 1
    assert "is not the digest of its content" in capsys.readouterr().err
    assert not (tmp_path / "cleaned").exists()


@pytest.mark.parametrize("where", [".", "cleaned", "sub/cleaned"])
def test_clean_refuses_an_output_that_is_or_is_inside_its_input(space, capsys, where):
    before = {p: p.read_bytes() for p in space.shards.rglob("*") if p.is_file()}
    output = space.shards / where

    assert _clean(space, output) == 2
    assert f"error: --output {output} is --input {space.shards} or inside it" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in space.shards.rglob("*") if p.is_file()} == before


def test_clean_failing_midway_leaves_no_shard_and_no_report(space, tmp_path, capsys):
    copy = tmp_path / "old-copy"
    shutil.copytree(space.shards, copy)
    good = (copy / "good-2.parquet").read_bytes()
    (copy / "zz-truncated.parquet").write_bytes(good[: len(good) // 2])  # cleaned last
    output = tmp_path / "cleaned"
    output.mkdir()
    (output / "clean-report.json").write_text('{"from": "an earlier clean"}')

    assert _clean(space, output, input=copy) == 2
    assert "zz-truncated.parquet: not a readable parquet file" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == [], "neither the shards written before nor a report"


def test_clean_by_difference_with_a_shard_the_release_lacks_writes_nothing(space, tmp_path, capsys):
    copy = tmp_path / "old-copy"
    shutil.copytree(space.shards, copy)
    shutil.copy(copy / "good-2.parquet", copy / "good-3.parquet")

    assert _clean(space, tmp_path / "cleaned", "--by", "difference", input=copy) == 2
    err = capsys.readouterr().err
    assert f"release {space.latest} has no shard to compare 1 input shard(s) with: good-3;" in err
    assert not (tmp_path / "cleaned").exists()


# 6. A shard deleted from the input blocks every later release.


def test_a_deleted_shard_has_left_and_the_remaining_shards_publish(space, capsys):
    first = space.latest
    (space.shards / "good-2.parquet").unlink()

    assert space.run() == 0
    manifest = space.manifest()
    assert space.latest != first and list(manifest["shards"]) == ["good-1"]
    assert manifest["left"] == {"good-2": f"no longer in the input; published in release {first}"}
    assert manifest["held_back"] == {}
    card = (space.releases / space.latest / "README.md").read_text()
    assert "No longer in the input since the previous release: `good-2`." in card
    assert "- `good-2`: no longer in the input" in (space.releases / space.latest / "transparency.md").read_text()
    second = space.latest
    assert "left:      good-2: no longer in the input" in capsys.readouterr().out

    assert space.run("--force") == 0
    assert space.latest == second, "the same inputs again: the same release, not one that forgets good-2 left"
    assert main(["verify", str(space.releases)]) == 0


# 8. Everything failing moves `latest` to an empty release.


def test_a_truncated_shard_of_the_release_keeps_latest_where_it_was(space, capsys):
    first = space.latest
    shard = space.shards / "good-2.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # as while it is being uploaded again

    assert space.run() == 1
    captured = capsys.readouterr()
    assert space.latest == first and sorted(p.name for p in space.releases.iterdir()) == [first, "latest"]
    assert f"error: release: no release published: 1 shard(s) of release {first} failed or are held back (good-2:" in (
        captured.err
    )
    assert "(truncated, or still being written)" in captured.err and "--allow-partial-release" in captured.err
    assert "good-2" in captured.out and "FAILED" in captured.out

    assert space.run("--allow-partial-release") == 1, "published without it, as asked: still a failed run"
    manifest = space.manifest()
    assert space.latest != first and list(manifest["shards"]) == ["good-1"]
    assert manifest["settings"]["allow_partial_release"] is True
    assert "(truncated, or still being written)" in manifest["held_back"]["good-2"]
    assert "no removals output yet" not in manifest["held_back"]["good-2"]
    card = (space.releases / space.latest / "README.md").read_text()
    assert "The operator asked to publish without them (allow_partial_release)." in card
    assert "held back: good-2:" in capsys.readouterr().out
    assert main(["verify", str(space.releases)]) == 0


def test_a_new_shard_that_fails_does_not_stop_a_release_that_never_had_it(space, capsys):
    first = space.latest
    data = (space.shards / "good-2.parquet").read_bytes()
    (space.shards / "good-3.parquet").write_bytes(data[: len(data) // 2])

    assert space.run() == 1, "a failed shard fails the run"
    manifest = space.manifest()
    assert manifest["version"] != first, "rather than keep an older release, publish without a shard it never had"
    assert sorted(manifest["shards"]) == ["good-1", "good-2"] and list(manifest["held_back"]) == ["good-3"]
    assert manifest["settings"]["allow_partial_release"] is False


def test_an_empty_shard_folder_publishes_nothing(tmp_path, capsys):
    space = _make(tmp_path / "ws", shard_names=())

    assert space.run() == 1
    assert "error: release: no release published: a release with no shards is never published" in (
        capsys.readouterr().err
    )
    assert not space.releases.exists() or not (space.releases / "latest").exists()


def test_every_shard_gone_keeps_latest(space, capsys):
    first = space.latest
    for shard in space.shards.glob("*.parquet"):
        shard.unlink()

    assert space.run() == 1
    assert f"holds no shard; latest stays at {first}" in capsys.readouterr().err
    assert space.latest == first


def test_a_missing_keywords_file_keeps_latest(space, capsys):
    first = space.latest
    missing = space.root / "no-such-keywords.txt"

    assert space.run("--keywords", str(missing)) == 2
    assert capsys.readouterr().err == (
        f"error: keyword file {missing} (setting keywords: --keywords, RELAION_KEYWORDS): does not exist,"
        " expected a text file with one keyword per line\n"
    )
    assert space.latest == first


# 9. Release settings are ignored.


def test_every_setting_that_shapes_a_release_is_part_of_its_version(space, monkeypatch):
    versions = [space.latest]
    monkeypatch.setenv("RELAION_LICENSE", "cc-by-4.0")
    assert space.run() == 0
    versions.append(space.latest)
    assert (space.releases / space.latest / "README.md").read_text().startswith("---\nlicense: cc-by-4.0\n")
    assert space.manifest()["settings"]["license"] == "cc-by-4.0"

    monkeypatch.setenv("RELAION_REMOVAL_LIST_MAX_MATCH_SHARE", "0.001")
    assert space.run() == 0
    versions.append(space.latest)
    assert not space.manifest()["removal_list"]["published"]
    assert not (space.releases / space.latest / "removal-list.parquet").exists()

    assert space.run("--allow-partial-release") == 0, "nothing held back: the flag changes nothing but the record"
    versions.append(space.latest)
    assert space.manifest()["settings"]["allow_partial_release"] is True
    assert len(set(versions)) == 4, "two different releases never share a version"
    assert main(["verify", str(space.releases)]) == 0


# Poor ones: clear messages, or the right behaviour.


def test_a_release_location_that_is_a_file_fails_before_any_shard_runs(tmp_path, capsys):
    space = _make(tmp_path / "ws")
    space.releases.write_text("not a folder\n")

    assert space.run() == 2
    assert capsys.readouterr().err == (
        f"error: release location {space.releases} (--release, RELAION_RELEASE) is a file; expected a folder of"
        " releases, or a location that does not exist yet\n"
    )
    assert not (space.root / "work").exists(), "no work started"
    assert space.releases.read_text() == "not a folder\n"


def test_a_staging_folder_left_by_a_killed_publish_is_removed_by_the_next_run(space):
    leftover = space.releases / ".tmp-0123456789abcdef-1a2b3c4d"
    (leftover / "research").mkdir(parents=True)
    (leftover / "research" / "good-1.parquet").write_bytes(b"PAR1 half a file")
    partial_latest = space.releases / ".tmp-x1y2z3.part"
    partial_latest.write_text("0123")

    assert space.run() == 0
    assert sorted(p.name for p in space.releases.iterdir()) == [space.latest, "latest"]


def test_publishing_the_same_release_again_writes_nothing(space):
    """What lets a read-only release location take a rerun: the release it holds is this one, so nothing is
    written there (not even `latest`)."""
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in space.releases.rglob("*")}

    assert space.run("--force") == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in space.releases.rglob("*")} == before


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs that the test fills and then remounts read-only (needs root, as CI runs; skipped otherwise)."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the read-only test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_release_location_takes_a_rerun_of_the_release_it_holds(space, read_only_mount, capsys):
    shutil.copytree(space.releases, read_only_mount, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    space.releases = read_only_mount
    first = space.latest

    assert space.run() == 0
    assert space.latest == first

    (space.shards / "good-2.parquet").unlink()  # a new release is due: the location cannot take it
    assert space.run() == 1
    assert (
        f"release location {read_only_mount}: cannot write (Read-only file system); expected a folder this process"
        " may write to (--release, RELAION_RELEASE)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "variable, value, reason",
    [
        ("RELAION_SAFE_THRESHOLD", "0.1", "research-safe was written with another safe threshold"),
        ("RELAION_SKIP_IMAGE_MATCHING", "1", "matched with another keyword rule or image matching"),
        ("RELAION_RESEARCH_THRESHOLD", "0.5", "matched with another keyword rule or image matching"),
    ],
)
def test_the_release_job_never_publishes_shards_made_with_other_settings(space, monkeypatch, variable, value, reason):
    """The release job alone (the UI's "Materialize", the nightly schedule) after a setting changed, before the
    shards ran again: its manifest would state the new setting over shards made with the old one. Every shard
    is held back with the reason, nothing is published and `latest` stays; `relaion run` then reruns them."""
    import dagster as dg

    from assets.definitions import build_definitions
    from relaion_pipeline.core.settings import Settings

    assert space.run() == 0  # the copied workspace's files are new files: matched again
    before = space.latest
    monkeypatch.setenv(variable, value)
    settings = Settings.from_env(
        shards=str(space.shards), blocklists=str(space.root / "lists"), sidecars=str(space.root / "sidecars"),
        work=str(space.root / "work"), release=str(space.releases),
    )  # fmt: skip
    monkeypatch.setenv("DAGSTER_HOME", settings.dagster_home)
    with dg.DagsterInstance.get() as instance:
        job = build_definitions(settings).resolve_job_def("release_job")
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    failure = error.cause.message if error.cause else error.message
    assert "good-1" in failure and reason in failure
    assert space.latest == before
    assert [p.name for p in space.releases.iterdir() if p.name != "latest"] == [before]
    assert space.run() == 0 and space.latest != before
    assert main(["verify", str(space.releases)]) == 0


# Typed records (issue 20): a stage's or a check's record that was edited, or written by another version, holds
# its shard back naming the file and the field, and the next run makes that shard again.

EDITED_RECORDS = [
    ("stats/removals/good-1.json", lambda r: r.update(rows_removed="1"), "field 'rows_removed' must be an integer"),
    ("stats/removals/good-1.json", lambda r: r["rules"].pop("host_forms"), "field 'rules.host_forms' is missing"),
    ("stats/research/good-1.json", lambda r: r.pop("sha256"), "field 'sha256' is missing"),
    ("stats/research-safe/good-1.json", lambda r: r.update(version=0), "research-safe record of version 0"),
    ("stats/research-safe/good-1.json", lambda r: [r.pop("record"), r.pop("version")], "no record name or version"),
    (
        "validation/research_has_no_blocklist_match/good-1.json",
        lambda r: r.update(success="yes"),
        "field 'success' must be true or false",
    ),
]


def test_an_edited_or_older_record_holds_its_shard_back_and_the_next_run_makes_it_again(tmp_path, capsys):
    space = _make(tmp_path / "ws")
    assert space.run() == 0
    settings = Settings(
        shards=str(space.shards),
        blocklists=str(space.root / "lists"),
        sidecars=str(space.root / "sidecars"),
        work=str(space.root / "work"),
        release=str(space.releases),
    )
    for record, edit, named in EDITED_RECORDS:
        path = space.root / "work" / record
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        found = status.of_shard(settings, "good-1")
        assert not found.publishable and str(path) in found.reason and named in found.reason, record
        assert status.of_shard(settings, "good-2").publishable, "the other shard is untouched"
        capsys.readouterr()
        assert space.run() == 0
        out = capsys.readouterr().out
        assert "good-1: up to date" not in out and "good-2: up to date" in out, record
        assert status.of_shard(settings, "good-1").publishable, record
        assert sorted(space.manifest()["shards"]) == ["good-1", "good-2"]
