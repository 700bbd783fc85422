"""The Dagster UI in a real browser (issue 7): what a maintainer relies on when they open `make ui`.

Generates a small demo store, runs `relaion run` once, starts `dagster dev` on it (as `make ui` does, with
the settings in `RELAION_*`), then drives headless Chromium through Selenium: the asset graph shows every
stage, a shard's materialization shows its metadata, and a backfill of every shard launched by clicking
through the UI runs through the queue within its limits and succeeds. Screenshots go to `<tmp>/screenshots` (copied to `$RELAION_SCREENSHOTS`
when set).

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); nothing here downloads a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from services import runs_overlapping

from relaion_pipeline.demo_data import demo
from relaion_pipeline.stages import pipeline

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
LOCATION = "assets.definitions"  # the code location's name in workspace.yaml (its module)
STAGES = ["blocklist", "removals", "research", "research_safe", "release"]
SHARD = "joined/part-00000"
SHARDS = ["joined/part-00000", "plain/part-00001"]  # the demo's two shards (one of each first two families)
WAIT = 30  # seconds for any one page or element

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_signals():
    # A shell that starts jobs in the background leaves SIGINT/SIGTERM ignored, and exec keeps that: dagster dev
    # would then survive SIGTERM. Restore the defaults in the child (it also gets its own process group).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _group_alive(pgid: int) -> list[str]:
    """Live (non-zombie) processes of a process group, as `pid cmdline`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(f"{stat.parent.name} {cmd}")
    return alive


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.2)
    proc.wait(timeout=10)


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Demo data processed once by `relaion run`, so the instance under work/dagster has materializations."""
    root = tmp_path_factory.mktemp("ui")
    demo.generate(root / "in", shards=2, rows=400, seed=11)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAION_", "DAGSTER_HOME"))}
    env.update(
        RELAION_SHARDS=str(root / "in" / "shards"),
        RELAION_BLOCKLISTS=str(root / "in" / "blocklists"),
        RELAION_SIDECARS=str(root / "in" / "sidecars"),
        RELAION_WORK=str(root / "work"),
        RELAION_RELEASE=str(root / "releases"),
    )
    ran = subprocess.run(
        [sys.executable, "-m", "relaion_pipeline.cli", "run",
         "--shards", env["RELAION_SHARDS"], "--blocklists", env["RELAION_BLOCKLISTS"],
         "--sidecars", env["RELAION_SIDECARS"], "--work", env["RELAION_WORK"], "--release", env["RELAION_RELEASE"]],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"] {SHARD}: 400 rows in" in ran.stdout
    env["DAGSTER_HOME"] = str(root / "work" / "dagster")
    return root, env


@pytest.fixture(scope="module")
def ui(store):
    """`dagster dev` on a free port of 127.0.0.1, from the repository root (so workspace.yaml is used)."""
    root, env = store
    base = f"http://127.0.0.1:{_free_port()}"
    log = open(root / "dagster-dev.log", "w")  # closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1]],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_default_signals,
    )  # fmt: skip
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = _graphql(
                    base, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
                )
                status = {e["name"]: e["loadStatus"] for e in data["data"]["workspaceOrError"]["locationEntries"]}
                if status.get(LOCATION) == "LOADED":
                    break
            except (OSError, urllib.error.URLError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        else:
            log.flush()
            pytest.fail(
                f"dagster dev did not load {LOCATION} ({status}):\n{(root / 'dagster-dev.log').read_text()[-3000:]}"
            )
        yield base, root, env
    finally:
        _stop_group(proc)
        log.close()
        survivors = _group_alive(proc.pid)
        assert not survivors, f"dagster processes survived the test: {survivors}"


@pytest.fixture(scope="module")
def browser(ui, tmp_path_factory):
    base, _, _ = ui
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1600,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # selenium-manager must never fetch anything
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        # Same origin first, then mark the "Join the Dagster community" dialog as dismissed (as its Skip does).
        driver.get(f"{base}/server_info")
        driver.execute_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(ui):
    _, root, _ = ui
    folder = root / "screenshots"
    folder.mkdir()

    def shoot(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), path
        if os.environ.get("RELAION_SCREENSHOTS"):
            target = Path(os.environ["RELAION_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
        return path

    yield shoot


def _exact(text: str) -> str:
    return f"//*[normalize-space(text())='{text}']"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 20_000, f"{path}: {len(data)} bytes, looks blank"


def test_asset_graph_shows_every_stage(ui, browser, screenshots):
    base, _, _ = ui
    browser.get(f"{base}/locations/{LOCATION}/asset-groups/relaion")
    wait = WebDriverWait(browser, WAIT)
    for stage in STAGES:
        wait.until(ec.visibility_of_element_located((By.XPATH, _exact(stage))), f"asset {stage} in the graph")
    # Every node has loaded its status from the instance (the graph is drawn before that).
    wait.until(lambda d: len(d.find_elements(By.XPATH, _exact("Materialized"))) >= 2, "materialized nodes")
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))
    _assert_png(screenshots(browser, "01-asset-graph"))


def test_shard_materialization_shows_its_metadata(ui, browser, screenshots):
    base, root, _ = ui
    browser.get(f"{base}/assets/removals?view=partitions&partition={quote(SHARD, safe='')}")
    wait = WebDriverWait(browser, WAIT)

    def value(name: str) -> str:
        cell = (By.XPATH, f"//tr[td[normalize-space()='{name}']]/td[2]")
        wait.until(ec.visibility_of_element_located(cell), f"metadata {name}")
        return browser.find_element(*cell).text.strip()

    stats = json.loads(Path(pipeline.Work(str(root / "work")).stats("removals", SHARD)).read_text())
    wait.until(ec.visibility_of_element_located((By.XPATH, _exact(SHARD))))
    assert value("shard") == SHARD
    assert value("rows_in") == f"{stats['rows_in']}" == "400"
    assert value("rows_removed") == f"{stats['rows_removed']}"
    assert int(value("rows_removed")) > 0
    _assert_png(screenshots(browser, "02-removals-partition-metadata"))

    table = browser.find_element(By.XPATH, _exact("kind/source/category"))  # the `removals` markdown table
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)
    wait.until(ec.visibility_of_element_located((By.XPATH, _exact("kind/source/category"))))
    for key, count in stats["removed_by_kind_source_category"].items():
        row = browser.find_element(
            By.XPATH, f"//table[.//th[normalize-space()='kind/source/category']]//tr[td[1][normalize-space()='{key}']]"
        )
        assert row.find_element(By.XPATH, "td[2]").text.strip() == f"{count:,}"
    _assert_png(screenshots(browser, "03-removals-partition-table"))


def test_a_backfill_of_every_shard_launched_from_the_ui_runs_through_the_queue_and_succeeds(ui, browser, screenshots):
    """Materialize, All partitions, Launch backfill: `dagster dev`'s daemon starts the runs from the queue of
    the default dagster.yaml, never more at once than its limit nor two of one shard, and each shard's three
    assets materialize with every check passed."""
    base, _, env = ui
    browser.get(f"{base}/locations/{LOCATION}/jobs/shard_job")
    wait = WebDriverWait(browser, WAIT)
    materialize = (By.XPATH, "//button[starts-with(normalize-space(), 'Materialize')]")
    wait.until(ec.element_to_be_clickable(materialize)).click()
    title = "Launch runs to materialize 3 assets"
    wait.until(
        ec.visibility_of_element_located((By.XPATH, f"//*[@role='dialog']//*[normalize-space(text())='{title}']"))
    )
    wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@role='dialog']//button[normalize-space()='All']"))).click()
    launch = wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Launch backfill']")))
    _assert_png(screenshots(browser, "04-launch-backfill-of-every-shard"))
    launch.click()

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        # The daemon of `dagster dev` turns the backfill into runs, queues them and starts them within the limit;
        # each starts a process per step (each ~20 s on a busy 2-core machine).
        deadline, records = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            backfills = instance.get_backfills()
            if backfills:
                records = instance.get_run_records(dg.RunsFilter.for_backfill(backfills[0].backfill_id))
                if len(records) == len(SHARDS) and all(r.dagster_run.is_finished for r in records):
                    break
            time.sleep(1)
        runs = [r.dagster_run for r in records]
        assert sorted(r.tags.get("dagster/partition") for r in runs) == SHARDS, [(r.run_id, r.tags) for r in runs]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
        most, same_shard = runs_overlapping(records)
        limit = yaml.safe_load(Path(env["DAGSTER_HOME"], "dagster.yaml").read_text())["run_coordinator"]["config"]
        assert most <= limit["max_concurrent_runs"] and same_shard == [], (most, same_shard)
        for run in runs:
            events = instance.all_logs(run.run_id)
            materialized = {
                (e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition)
                for e in events
                if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
            }
            shard = run.tags["dagster/partition"]
            assert materialized == {(name, shard) for name in ("removals", "research", "research_safe")}
            evaluations = [
                e.dagster_event.event_specific_data
                for e in events
                if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ]
            assert evaluations and all(ev.passed for ev in evaluations), [
                (ev.check_name, ev.passed) for ev in evaluations
            ]

    browser.get(f"{base}/runs/{runs[0].run_id}")
    wait.until(ec.visibility_of_element_located((By.XPATH, _exact("Success"))))
    wait.until(ec.visibility_of_element_located((By.XPATH, "//*[contains(text(), 'Finished execution of run')]")))
    _assert_png(screenshots(browser, "05-run-succeeded"))
