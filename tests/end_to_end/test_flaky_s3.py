"""An S3 server that fails: a proxy on 127.0.0.1 in front of a real S3 protocol server (moto) answers some
requests with HTTP 500 and drops some connections without an answer. Transient failures are retried and the
run gives the same bytes as a local one; a server that never answers well fails the run with a clear error and
leaves no half-visible release. The same proxy counts what DuckDB asks the server about each file."""

import hashlib
import http.client
import http.server
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import s3fs
from moto.server import ThreadedMotoServer

from relaion_pipeline.demo_data import demo

NAMES = ["joined/part-00000", "plain/part-00001"]
WORKER = f"""
import sys
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks
from relaion_pipeline.core.settings import Settings
settings = Settings.layout(sys.argv[1], sys.argv[2])
pipeline.build_blocklist(settings)
for name in {NAMES!r}:
    pipeline.compute_removals(settings, name)
    pipeline.write_research(settings, name)
    checks.check_research(settings, name)
    pipeline.write_research_safe(settings, name)
    checks.check_research_safe(settings, name)
    checks.check_input(settings, name)
print(release.publish(settings, {NAMES!r})["version"])
"""


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards HTTP requests to `upstream`; request n gets a 500 when n % fail_every == 0 and a dropped
    connection when n % drop_every == 0 (0: never)."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], fail_every: int, drop_every: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.fail_every, self.drop_every = upstream, fail_every, drop_every
        self.lock = threading.Lock()
        self.seen = self.failed = self.dropped = 0
        self.requests: Counter = Counter()  # (method, path) of every request
        self.puts: dict[str, list[tuple[int, bool]]] = {}  # path: (bytes of body, copied by the server) per PUT

    def verdict(self, method: str, path: str) -> str:
        with self.lock:
            self.seen += 1
            self.requests[method, path.split("?")[0]] += 1
            if self.drop_every and self.seen % self.drop_every == 0:
                self.dropped += 1
                return "drop"
            if self.fail_every and self.seen % self.fail_every == 0:
                self.failed += 1
                return "fail"
            return "forward"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "PUT":
            with self.server.lock:
                copied = "x-amz-copy-source" in {k.lower() for k in self.headers}
                self.server.puts.setdefault(self.path.split("?")[0], []).append((len(body), copied))
        verdict = self.server.verdict(self.command, self.path)
        if verdict == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if verdict == "fail":
            error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{self.server.upstream[0]}:{self.server.upstream[1]}"
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else None  # HEAD: the object's
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


@pytest.fixture(scope="module")
def moto():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    yield server.get_host_and_port()
    server.stop()


def _proxy(moto, fail_every: int, drop_every: int) -> FlakyProxy:
    proxy = FlakyProxy(moto, fail_every, drop_every)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy


def _env(endpoint: str) -> dict:
    import os

    return os.environ | {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "relaion-test",
        "AWS_SECRET_ACCESS_KEY": "relaion-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _bucket(moto, tmp_path: Path, bucket: str) -> str:
    import os

    os.environ.update({k: v for k, v in _env(f"http://{moto[0]}:{moto[1]}").items() if k.startswith("AWS_")})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    fs.mkdir(bucket)
    fs.put(str(tmp_path / "in") + "/", f"{bucket}/input/", recursive=True)
    return f"s3://{bucket}"


def _research_digests(fs, root: str) -> dict[str, str]:
    return {name: hashlib.sha256(fs.cat_file(f"{root}/work/research/{name}.parquet")).hexdigest() for name in NAMES}


def test_transient_500s_and_dropped_connections_are_retried(moto, tmp_path):
    """Retried, with the same bytes and release as a local run; and publishing sends none of a shard file's bytes:
    the server copies each work file into the release (a copy answered 500 is asked again, as a copy)."""
    demo.generate(tmp_path / "in", shards=2, rows=600, seed=9)
    local = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "in"), str(tmp_path / "local")], capture_output=True, timeout=300
    )
    assert local.returncode == 0, local.stderr.decode()[-2000:]
    root = _bucket(moto, tmp_path, "flaky")
    proxy = _proxy(moto, fail_every=120, drop_every=199)

    done = subprocess.run(
        [sys.executable, "-c", WORKER, f"{root}/input", root],
        capture_output=True,
        timeout=300,
        env=_env(f"http://127.0.0.1:{proxy.server_address[1]}"),
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    print(f"requests {proxy.seen}, answered 500: {proxy.failed}, dropped: {proxy.dropped}")
    assert proxy.failed >= 5 and proxy.dropped >= 3, (proxy.seen, proxy.failed, proxy.dropped)
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    local_digests = {
        name: hashlib.sha256((tmp_path / "local" / "work" / "research" / f"{name}.parquet").read_bytes()).hexdigest()
        for name in NAMES
    }
    assert _research_digests(fs, root) == local_digests
    version = done.stdout.decode().strip()
    assert version == local.stdout.decode().strip(), "the same release version"
    proxy.shutdown()
    published = {path: puts for path, puts in proxy.puts.items()
                 if path.startswith(f"/flaky/releases/{version}/") and path.endswith(".parquet")}  # fmt: skip
    assert len(published) == 4, sorted(proxy.puts)
    assert all(put == (0, True) for puts in published.values() for put in puts), "copied by the server, retried"


def test_a_server_that_keeps_failing_stops_the_run_clearly(moto, tmp_path):
    demo.generate(tmp_path / "in", shards=2, rows=1500, seed=9)
    root = _bucket(moto, tmp_path, "broken")
    proxy = _proxy(moto, fail_every=1, drop_every=0)  # every request: 500

    done = subprocess.run(
        [sys.executable, "-c", WORKER, f"{root}/input", root],
        capture_output=True,
        timeout=300,
        env=_env(f"http://127.0.0.1:{proxy.server_address[1]}") | {"AWS_MAX_ATTEMPTS": "2"},
    )
    proxy.shutdown()

    assert done.returncode != 0
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("relaion_pipeline.core.storage.StorageError: s3://broken/input/blocklists:"), last
    assert "the storage server kept failing after retries" in last
    assert "relaion-test-secret" not in done.stderr.decode()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    assert not fs.exists("broken/releases"), "no release is visible"


def test_duckdb_asks_about_an_input_once_and_about_a_work_file_at_every_open(moto, tmp_path, monkeypatch):
    """DuckDB asks the store about a file (HEAD) at every reference and every thread's open; inputs never change
    during a run and are asked about once per connection, while a work file is seen as it is now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from relaion_pipeline.core.settings import Settings
    from relaion_pipeline.match import matching

    (tmp_path / "in" / "shards").mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(5000))}), tmp_path / "in" / "shards" / "s.parquet", row_group_size=1000)
    root = _bucket(moto, tmp_path, "asked")
    s3fs.S3FileSystem(use_listings_cache=False).pipe("asked/work/t.parquet", _parquet(3))
    proxy = _proxy(moto, fail_every=0, drop_every=0)
    for variable, value in _env(f"http://127.0.0.1:{proxy.server_address[1]}").items():
        if variable.startswith("AWS_"):
            monkeypatch.setenv(variable, value)
    s3fs.S3FileSystem.clear_instance_cache()
    con = matching.connect(Settings.layout(f"{root}/input", root))
    shard, work = f"{root}/input/shards/s.parquet", f"{root}/work/t.parquet"
    query = f"SELECT (SELECT sum(x) FROM read_parquet('{shard}')), (SELECT count(*) FROM read_parquet('{work}'))"
    try:
        assert con.sql(query).fetchall() == [(sum(range(5000)), 3)]
        assert con.sql(query).fetchall() == [(sum(range(5000)), 3)]
        s3fs.S3FileSystem(use_listings_cache=False).pipe("asked/work/t.parquet", _parquet(7))  # rewritten
        assert con.sql(query).fetchall() == [(sum(range(5000)), 7)], "the work file as it is now"
    finally:
        con.close()
        proxy.shutdown()
    assert proxy.requests["HEAD", "/asked/input/shards/s.parquet"] == 1
    assert proxy.requests["HEAD", "/asked/work/t.parquet"] >= 3


def _parquet(rows: int) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"y": list(range(rows))}), sink)
    return sink.getvalue()
