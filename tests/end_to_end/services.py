"""Real services for the tests that run Dagster as a deployment does: a PostgreSQL server, redis-server,
`dagster-daemon`, each in a process group of its own (stopped by group), and what the tests read back from
the instance's run records."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POSTGRES_BIN = max(  # Debian's postgresql (.ci/run installs it), its newest version if there are several
    (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")),
    key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin"),
)
REDIS = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_signals() -> None:
    # a shell that starts jobs in the background leaves SIGINT/SIGTERM ignored, and exec keeps that
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start `args` in a process group of its own, its output in `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_signals,
            **kwargs,
        )


def stop(process: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 20) -> None:
    """Stop a process started by `start` and everything in its group (SIGKILL after `grace` seconds)."""
    for sig, wait in ((first, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent


def wait_for(condition: Callable[[], object], what: str, seconds: float, alive: dict[str, tuple] = ()) -> object:
    """Poll `condition` until it returns something true; fail naming `what` after `seconds`, or at once when a
    process of `alive` ({name: (process, log)}) has exited, with the tail of its log."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        for name, (process, log) in dict(alive).items():
            assert process.poll() is None, f"{name} exited ({process.returncode}): {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"gave up after {seconds} s waiting for {what}"
        time.sleep(0.5)


@contextlib.contextmanager
def postgres() -> Iterator[dict[str, str]]:
    """A PostgreSQL server on a free port of 127.0.0.1 with a database `dagster`, owned and run by the `postgres`
    user (it refuses to run as root) in a folder of its own under $TMPDIR (pytest's are closed to other users),
    password authentication; yields the DAGSTER_PG_* environment."""
    root = Path(tempfile.mkdtemp(prefix="relaion-postgres-"))
    password = secrets.token_hex(8)
    (root / "password").write_text(password)
    shutil.chown(root, "postgres")
    shutil.chown(root / "password", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(POSTGRES_BIN / "initdb"), "-D", str(root / "data"), "-U", "dagster", "--no-sync"]
        + ["--auth=scram-sha-256", f"--pwfile={root / 'password'}", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = start(
        [*as_postgres, str(POSTGRES_BIN / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1"]
        + ["-p", str(port), "-k", str(root), "-F", "-c", "max_connections=200"],
        root / "postgres.log",
    )
    env = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": password,
    }
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    [*as_postgres, str(POSTGRES_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                    capture_output=True,
                ).returncode
                == 0
            ),
            "postgres to accept connections",
            60,
            {"postgres": (server, root / "postgres.log")},
        )
        subprocess.run(
            [*as_postgres, str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
            + ["-U", "dagster", "dagster"],
            check=True,
            capture_output=True,
            env=os.environ | {"PGPASSWORD": password},
        )
        yield env
    finally:
        stop(server, first=signal.SIGINT)  # fast shutdown
        shutil.rmtree(root, ignore_errors=True)


def workspace(folder: Path, attribute: str) -> Path:
    """A workspace.yaml loading `attribute` of tests/end_to_end/location.py as the code location `relaion`."""
    path = folder / "workspace.yaml"
    location = Path(__file__).with_name("location.py")
    path.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {location}\n      attribute: {attribute}\n"
        f"      working_directory: {REPO}\n      location_name: relaion\n"
    )
    return path


@contextlib.contextmanager
def daemon(env: dict[str, str], workspace: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on `workspace`, as a deployment runs it."""
    process = start([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], log, env=env, cwd=REPO)
    try:
        yield process
    finally:
        stop(process)


def runs_overlapping(records: list[dg.RunRecord]) -> tuple[int, list[tuple[str, str, str]]]:
    """From the runs' start and end times: the most runs that ran at one moment, and every pair of runs of one
    partition that ran at the same time (partition, run id, run id). A run still going counts until now."""
    spans = sorted(
        ((r.start_time, r.end_time or float("inf"), r.dagster_run) for r in records if r.start_time is not None),
        key=lambda span: span[:2],
    )
    most = max((sum(1 for s, e, _ in spans if s <= start < e) for start, _, _ in spans), default=0)
    same_partition = [
        (a.tags["dagster/partition"], a.run_id, b.run_id)
        for i, (start_a, end_a, a) in enumerate(spans)
        for start_b, _, b in spans[i + 1 :]
        if "dagster/partition" in a.tags
        and a.tags["dagster/partition"] == b.tags.get("dagster/partition")
        and start_b < end_a
    ]
    return most, same_partition


def finished(instance: dg.DagsterInstance, filters: dg.RunsFilter, count: int) -> list[dg.RunRecord] | None:
    """The run records matching `filters` once there are `count` of them and all have finished, else None."""
    records = instance.get_run_records(filters)
    if len(records) < count or any(not r.dagster_run.is_finished for r in records):
        return None
    return list(records)


def why_failed(instance: dg.DagsterInstance, records: list[dg.RunRecord]) -> dict[str, list[str]]:
    """Each failed run's partition, job and the errors its events name (for an assertion's message)."""
    reasons = {}
    for record in records:
        run = record.dagster_run
        if run.status == dg.DagsterRunStatus.SUCCESS:
            continue
        errors = [
            event.dagster_event.event_specific_data.error.message.strip()[-600:]
            for event in instance.all_logs(run.run_id)
            if event.dagster_event and getattr(event.dagster_event.event_specific_data, "error", None)
        ]
        reasons[f"{run.job_name} {run.tags.get('dagster/partition', '')} {run.run_id}"] = errors or [run.status.value]
    return reasons
