"""`relaion run --workers N` (issue 21): shards at once, in worker processes, through the same Dagster
definitions and instance. What the operator relies on: the release is the same as one shard at a time, byte
for byte; one failing shard does not stop the others; Ctrl-C or SIGTERM stops every worker and publishes
nothing; a wrong value names the flag or variable; each shard at once gets its share of the threads and of the
memory limit, so that memory stays about N times one shard's."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relaion_pipeline import cli
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo

NAMES = ["joined/part-00000", "plain/part-00001"]


def relaion(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, **(env or {})),
    )  # fmt: skip


def layout(inputs: Path, out: Path) -> list:
    return ["--shards", inputs / "shards", "--blocklists", inputs / "blocklists", "--sidecars", inputs / "sidecars",
            "--work", out / "work", "--release", out / "releases"]  # fmt: skip


def published(out: Path) -> tuple[str, dict, dict[str, str]]:
    """The version `latest` names, its manifest without `created`, and the sha256 of every file under it."""
    releases = out / "releases"
    version = (releases / "latest").read_text().strip()
    manifest = json.loads((releases / version / "manifest.json").read_text())
    manifest.pop("created")
    files = {str(p.relative_to(releases / version)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((releases / version).rglob("*")) if p.is_file() and p.name != "manifest.json"}  # fmt: skip
    return version, manifest, files


def shard_lines(out: str) -> dict[str, list[str]]:
    """Each `[i/n]` line of a run's output by shard, with the stage lines printed after it."""
    found, current = {}, None
    for line in out.splitlines():
        if line.startswith("["):
            current = line.split("] ", 1)[1].split(":", 1)[0]
            found[current] = [line]
        elif line.startswith("      ") and current:
            found[current].append(line)
        else:
            current = None
    return found


def children(parent: int) -> list[tuple[int, bytes]]:
    """(pid, command line) of each process whose parent is `parent`."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
            command = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == parent:
            found.append((int(status.parent.name), command))
    return found


def workers_of(run: int) -> list[int]:
    """The shard workers of a run: the children of its multiprocessing fork server."""
    return [pid for server, command in children(run) if b"forkserver" in command for pid, _ in children(server)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:\t")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_two_workers_stop_on_ctrl_c_then_publish_what_one_does_and_a_failing_shard_fails_alone(tmp_path):
    """Two demo shards (image hashes, PDQ near copies, scores and NSFW tags) and a damaged one, partial releases
    allowed: one worker publishes the two. Two workers, interrupted once a shard has ended (the other worker is
    in the middle of one), publish nothing and leave no worker; run again, they publish the same release."""
    inputs = tmp_path / "in"
    demo.generate(inputs, shards=2, rows=1500, seed=21)
    (inputs / "shards" / "damaged.parquet").write_bytes(b"PAR1 not really a parquet file")
    one = relaion("run", *layout(inputs, tmp_path / "one"), "--allow-partial-release", "--workers", 1)
    assert one.returncode == 1, one.stdout + one.stderr
    order = [line.split("] ")[1].split(":")[0] for line in one.stdout.splitlines() if line.startswith("[")]
    assert order == ["damaged", *NAMES], "one worker: the shards in order, as before"

    command = ["run", *layout(inputs, tmp_path / "two"), "--allow-partial-release", "--workers", 2]
    process = subprocess.Popen([sys.executable, "-m", "relaion_pipeline.cli", *map(str, command)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("[1/3]"):
            break
    workers = workers_of(process.pid)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    out = "".join(seen) + out
    assert process.returncode == 130, out + err
    assert err.splitlines() == ["interrupted"], "one line, no worker's traceback"
    assert len(workers) == 2, "two worker processes ran"
    assert not [pid for pid in workers if alive(pid)], "no worker is left behind"
    assert "[3/3]" not in out and "release " not in out
    assert not (tmp_path / "two" / "releases").exists() or not any((tmp_path / "two" / "releases").iterdir())
    assert not [p for p in (tmp_path / "two" / "work").rglob("*") if p.name.startswith(".tmp-")]

    two = relaion("run", *layout(inputs, tmp_path / "two"), "--allow-partial-release", env={"RELAION_WORKERS": "2"})

    assert two.returncode == 1, two.stdout + two.stderr
    version, manifest, files = published(tmp_path / "one")
    assert published(tmp_path / "two") == (version, manifest, files), "the same release, byte for byte"
    assert {f"{variant}/{name}.parquet" for variant in ("research", "research-safe") for name in NAMES} <= set(files)
    assert list(manifest["held_back"]) == ["damaged"], manifest["held_back"]
    assert two.stderr == "", "workers print nothing of their own"
    for run in (one, two):
        lines = shard_lines(run.stdout)
        assert sorted(lines) == sorted([*NAMES, "damaged"]), run.stdout
        assert sorted(lines[name][0].split("]")[0] for name in lines) == ["[1/3", "[2/3", "[3/3"]
        assert "FAILED (" in lines["damaged"][0] and "damaged.parquet" in lines["damaged"][0], lines["damaged"]
        for name in NAMES:
            first, *stages = lines[name]
            if run is two and first.endswith(", skipped"):  # it had ended before the signal: its files are whole
                continue
            assert first.endswith(" ok") and "1,500 rows in" in first, first
            assert [s.split()[0] for s in stages] == ["removals", "research", "research-safe"], lines[name]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_wrong_number_of_workers_names_the_flag_or_variable(tmp_path, value, capsys, monkeypatch):
    layout_args = [str(a) for a in layout(tmp_path / "in", tmp_path)]
    expected = "expected a whole number" if value == "two" else f"expected 1 or more shards at once, got {value}"

    with pytest.raises(SystemExit) as flag:
        cli.main(["run", *layout_args, f"--workers={value}"])
    assert flag.value.code == 2
    assert f"argument --workers: '{value}': {expected}" in capsys.readouterr().err

    monkeypatch.setenv("RELAION_WORKERS", value)
    assert cli.main(["run", *layout_args]) == 2
    assert capsys.readouterr().err.strip() == f"error: RELAION_WORKERS='{value}': {expected}"
    assert not (tmp_path / "work").exists(), "nothing was started"


def test_each_shard_at_once_gets_its_share_of_threads_and_memory(tmp_path):
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    given = Settings(duckdb_threads=8, duckdb_memory_limit="6GB")
    assert given.shard_share(1) == given, "one worker: the settings as they are"
    share = given.shard_share(3, str(cgroup))
    assert (share.threads(), share.memory_limit(share.threads())) == (2, "2000MB"), "the run's limit, divided"
    assert Settings(duckdb_threads=2).shard_share(4, str(cgroup)).threads() == 1, "at least one thread each"

    default = Settings(duckdb_threads=8)
    share = default.shard_share(2, str(cgroup))
    assert share.memory_limit(share.threads()) == "512MB", "no cgroup limit: each shard its own threads' default"
    (cgroup / "memory.max").write_text(f"{2 * 800 * 10**6}\n")  # half of it, 800MB, is DuckDB's at most
    share = default.shard_share(2, str(cgroup))
    assert share.memory_limit(share.threads()) == "400MB", "half the pod's memory, shared by the shards at once"
