"""Faults: a full disk fails clearly and loses nothing; a process killed with SIGKILL at any point while shards
are processed or a release is published never leaves a partial file under a final name or a half-visible
release, and the next run converges to the bytes of an undisturbed run; two runs of one partition at once do
not corrupt its outputs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import release

SHARDS = ["joined/part-00000", "plain/part-00001"]
WORKER = f"""
import sys
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks
from relaion_pipeline.core.settings import Settings
inputs, outputs, what = sys.argv[1:4]
settings = Settings.layout(inputs, outputs)
names = {SHARDS!r}
if what in ("shards", "all"):
    pipeline.build_blocklist(settings)
    for name in names:
        pipeline.compute_removals(settings, name)
        pipeline.write_research(settings, name)
        pipeline.write_research_safe(settings, name)
if what in ("checks", "all"):
    for name in names:
        checks.check_input(settings, name)
        checks.check_research(settings, name)
        checks.check_research_safe(settings, name)
if what in ("release", "all"):
    release.publish(settings, names)
print("done")
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    demo.generate(root / "in", shards=2, rows=3000, seed=5)
    return root


def _start(inputs: Path, outputs: Path, what: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(inputs / "in"), str(outputs), what],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _run(inputs: Path, outputs: Path, what: str) -> float:
    started = time.perf_counter()
    process = _start(inputs, outputs, what)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - started


def _final_files(root: Path) -> list[Path]:
    """Files under their final names: everything but the hidden temporaries of atomic writes."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def _assert_nothing_partial(outputs: Path) -> None:
    for path in _final_files(outputs / "work"):
        if path.suffix == ".parquet":
            pq.read_metadata(path)  # a truncated parquet file has no footer
        elif path.suffix == ".json":
            json.loads(path.read_text())
    releases = outputs / "releases"
    for version in releases.iterdir() if releases.exists() else []:
        if version.name.startswith(".") or version.is_file():
            continue
        _, problems = release.verify(str(version))
        assert problems == [], f"{version.name} is visible but incomplete: {problems}"
    if (releases / "latest").exists():
        _, problems = release.verify(str(releases))
        assert problems == []


def _digests(folder: Path, skip=("manifest.json",)) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(_final_files(folder))
        if p.name not in skip and "locks" not in p.parts and "dagster" not in p.parts
    }


def _kill_at(inputs: Path, outputs: Path, what: str, delay: float) -> bool:
    """Start `what`, SIGKILL it after `delay` seconds; True when it was killed before it finished."""
    process = _start(inputs, outputs, what)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def _kill_series(inputs: Path, outputs: Path, what: str, seconds: float, wanted: int) -> int:
    """Kill `what` at `wanted` points spread over its duration (a run that finished first does not count),
    checking after each kill that nothing partial is visible. Returns the number of kills."""
    killed = attempts = 0
    while killed < wanted and attempts < 3 * wanted:
        fraction = (0.5 + attempts * 0.6180339887) % 1  # low-discrepancy: covers the whole run evenly
        killed += _kill_at(inputs, outputs, what, seconds * (0.1 + 0.85 * fraction))
        attempts += 1
        _assert_nothing_partial(outputs)
    return killed


def _inputs_digest(inputs: Path) -> dict[str, str]:
    return _digests(inputs / "in", skip=())


def test_sigkill_while_processing_and_publishing_never_shows_partial_output(inputs, tmp_path):
    before = _inputs_digest(inputs)
    reference = tmp_path / "reference"
    _run(inputs, reference, "shards")
    shard_seconds = _run(inputs, reference, "shards")  # as a rerun: the indexes exist
    _run(inputs, reference, "checks")
    _run(inputs, reference, "release")
    release_seconds = _run(inputs, reference, "release")  # as a re-publish of the same version

    outputs = tmp_path / "killed"
    killed = _kill_series(inputs, outputs, "shards", shard_seconds, wanted=14)
    _run(inputs, outputs, "shards")
    _run(inputs, outputs, "checks")
    killed += _kill_series(inputs, outputs, "release", release_seconds, wanted=8)
    _run(inputs, outputs, "all")
    _assert_nothing_partial(outputs)

    assert killed >= 20
    for folder in ("removals", "research", "research-safe"):
        assert _digests(outputs / "work" / folder) == _digests(reference / "work" / folder), folder
    for name in SHARDS:  # the index is an internal file whose row order follows DuckDB's threads: same rows
        ours, theirs = (pq.read_table(root / "work" / "index" / f"{name}.parquet") for root in (outputs, reference))
        columns = [(c, "ascending") for c in ours.column_names]
        assert ours.sort_by(columns).equals(theirs.sort_by(columns))
    one, two = Path(release.resolve(str(reference / "releases"))), Path(release.resolve(str(outputs / "releases")))
    assert one.name == two.name and _digests(one) == _digests(two)
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (one, two)]
    for manifest in manifests:
        manifest.pop("created")
    assert manifests[0] == manifests[1]
    assert _inputs_digest(inputs) == before, "inputs are never modified"


def test_two_runs_of_one_partition_at_once_do_not_corrupt_it(inputs, tmp_path):
    reference = tmp_path / "reference"
    _run(inputs, reference, "shards")
    outputs = tmp_path / "concurrent"
    _run(inputs, outputs, "shards")  # the blocklist and indexes exist: both runs below rewrite the same files

    runs = [_start(inputs, outputs, "shards") for _ in range(3)]
    results = [run.communicate(timeout=300) for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], [err.decode()[-1000:] for _, err in results]
    _assert_nothing_partial(outputs)
    for folder in ("removals", "research", "research-safe"):
        assert _digests(outputs / "work" / folder) == _digests(reference / "work" / folder), folder
    settings = Settings.layout(inputs / "in", outputs)
    from relaion_pipeline.stages import pipeline

    for name in SHARDS:
        research = pipeline.read_stats(settings, "research", name)
        path = Path(pipeline.Work(settings.work).variant("research", name))
        assert research.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), "stats describe the file"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Needs root (CI runs as root); skipped with the reason otherwise."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the full-disk test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_clearly_loses_nothing_and_a_rerun_converges(inputs, tmp_path, small_disk):
    before = _inputs_digest(inputs)
    reference = tmp_path / "reference"
    _run(inputs, reference, "all")

    process = _start(inputs, small_disk, "all")
    _, err = process.communicate(timeout=300)

    assert process.returncode != 0
    last = err.decode().strip().splitlines()[-1]
    assert "StorageError" in last and "no space left on the device while writing it" in last, last
    assert str(small_disk) in last, "the error names the file it could not write"
    _assert_nothing_partial(small_disk)
    assert _inputs_digest(inputs) == before

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    _run(inputs, small_disk, "all")
    for folder in ("removals", "research", "research-safe"):
        assert _digests(small_disk / "work" / folder) == _digests(reference / "work" / folder), folder
    one, two = Path(release.resolve(str(reference / "releases"))), Path(release.resolve(str(small_disk / "releases")))
    assert _digests(one) == _digests(two)
