"""Shards processed on Celery workers (dagster-celery, a real redis-server broker on 127.0.0.1, two worker
processes) give byte-identical outputs to the single-machine run."""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assets.runner import run_all
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.stages import pipeline

REDIS = shutil.which("redis-server")
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def cluster(tmp_path):
    """redis-server and two dagster-celery workers sharing one Dagster instance; yields the environment."""
    port = _free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    env = os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "RELAION_SHARDS": str(tmp_path / "in" / "shards"),
        "RELAION_BLOCKLISTS": str(tmp_path / "in" / "blocklists"),
        "RELAION_SIDECARS": str(tmp_path / "in" / "sidecars"),
        "RELAION_WORK": str(tmp_path / "celery" / "work"),
        "RELAION_RELEASE": str(tmp_path / "celery" / "releases"),
        "RELAION_CELERY_BROKER": broker,
    }
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("")
    config = tmp_path / "worker.yaml"
    config.write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")
    redis = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    workers, logs = [], []
    # create the instance's SQLite storage once, before two workers race to create it
    subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get()"], env=env, check=True)
    try:
        for name in ("w1", "w2"):
            log = tmp_path / f"{name}.log"
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
                    + ["-n", f"{name}@relaion-test"],
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=Path(__file__).resolve().parents[2],
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 90
        while not all("ready." in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            assert all(w.poll() is None for w in workers), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.5)
        yield env, logs
    finally:
        for process in (*workers, redis):
            _stop(process)


def _dagster(env: dict, *args: str) -> subprocess.Popen:
    """Start `dagster job execute` of the Celery definitions (bounded: with no worker, a run would hang)."""
    return subprocess.Popen(
        ["timeout", "-s", "KILL", "240", str(BIN / "dagster"), "job", "execute", "-m", "assets.celery_definitions"]
        + list(args),
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finished(run: subprocess.Popen) -> str:
    output = run.communicate()[0].decode()
    assert run.returncode == 0, output[-6000:]
    return output


def _tasks(logs: list[Path], state: str = "received") -> set[str]:
    """Ids of the Celery tasks the workers' logs say were received (or succeeded)."""
    pattern = re.compile(rf"Task execute_plan\[([0-9a-f-]+)\] {state}")
    return {task for log in logs for task in pattern.findall(log.read_text())}


def _digests(work: Path) -> dict[str, str]:
    return {
        str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("removals", "research", "research-safe")
        for p in sorted((work / folder).rglob("*.parquet"))
    }


def test_shards_on_two_celery_workers_match_the_single_machine_run(cluster, tmp_path, monkeypatch):
    env, logs = cluster
    planted = demo.generate(tmp_path / "in", shards=3, rows=600, seed=4)
    names = sorted(k for k in planted if not k.startswith("_"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    single = Settings.layout(tmp_path / "in", tmp_path / "single")
    assert run_all(single, progress=lambda line: None).ok

    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions('shards', {names!r})",
        ],
        env=env,
        check=True,
    )
    _finished(_dagster(env, "-j", "blocklist_job"))
    runs = [_dagster(env, "-j", "shard_job", "--tags", f'{{"dagster/partition": "{name}"}}') for name in names]
    for run in runs:  # the shards' runs at once, their steps spread over the two workers
        assert 'Submitting celery task for step "removals"' in _finished(run)

    received = _tasks(logs, "received")
    assert len(received) >= 3 * len(names), "every step (removals, research, research_safe) ran as a Celery task"
    assert _tasks(logs, "succeeded") == received, [log.read_text()[-1000:] for log in logs]
    celery_work = tmp_path / "celery" / "work"
    assert _digests(celery_work) == _digests(Path(single.work)) and len(_digests(celery_work)) == 3 * len(names)
    for name in names:
        assert pipeline.read_stats(Settings.layout(tmp_path / "in", tmp_path / "celery"), "research", name).sha256
