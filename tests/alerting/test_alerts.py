"""Maintainers get exactly one alert per failure on every channel, one when it clears, and never row data or
secrets: checked against a real HTTP receiver and a real SMTP server, with failures provoked through the same
Dagster definitions `relaion run` and the UI use."""

import datetime
import http.server
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from email import message_from_bytes, policy

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import BLOCKED_URL

from assets.alerts import BLOCKLIST_ALERTS, CHECK_ALERTS, RUN_ALERTS
from assets.definitions import build_definitions
from assets.resources import RelaionSettings
from assets.runner import instance_for, run_all
from relaion_pipeline.alerting import alert_channels, alerts
from relaion_pipeline.alerting.alert_channels import Notifier
from relaion_pipeline.alerting.alerts import AlertConfigError, AlertSettings
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline, variants

UNSAFE_URL = "http://unsafe.example.net/private-photo.jpg"
UNSAFE_CAPTION = "caption that must never reach a chat room"
ROW_DATA = (BLOCKED_URL, "secret caption", UNSAFE_URL, UNSAFE_CAPTION, "fine.example")
PASSWORD = "s3cret-smtp-password"
TOKEN = "T0000/B0000/webhook-token-9f3a"
UI = "http://dagster.example:3000"


# --- real receivers -------------------------------------------------------------------------------------------


class Webhook:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the scripted statuses, then 200."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.append({"path": self.path, "type": self.headers["Content-Type"], "body": body})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{TOKEN}?token=query-secret"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [json.loads(r["body"])["text"] for r in self.received]


class Mailbox:
    """What an aiosmtpd server received: messages, the login used and whether the session was under TLS."""

    def __init__(self):
        self.messages: list[dict] = []

    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data.login.decode() if session.auth_data else None
        self.messages.append(
            {"raw": envelope.content, "to": envelope.rcpt_tos, "login": login, "tls": session.ssl is not None}
        )
        return "250 OK"

    def bodies(self) -> list[str]:
        messages = [message_from_bytes(m["raw"], policy=policy.default) for m in self.messages]
        return [m.get_body().get_content().replace("\r\n", "\n") for m in messages]

    def subjects(self) -> list[str]:
        return [" ".join(message_from_bytes(m["raw"], policy=policy.default)["Subject"].split()) for m in self.messages]


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"alerts" and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smtp_server(mailbox: Mailbox, **options) -> Controller:
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port(), authenticator=_authenticator, **options)
    controller.start()
    return controller


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def smtp():
    mailbox = Mailbox()
    controller = _smtp_server(mailbox, auth_require_tls=False)
    mailbox.port = controller.port
    yield mailbox
    controller.stop()


@pytest.fixture
def alert_settings(webhook, smtp):
    return AlertSettings(
        webhook_url=webhook.url,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_user="alerts",
        smtp_password=PASSWORD,
        smtp_starttls=False,  # the TLS path has its own test below
        email_from="relaion@example.org",
        email_to=("maintainers@example.org",),
        ui_url=UI,
        timeout_seconds=5,
        retry_delay_seconds=0.01,
    )


@pytest.fixture
def settings(two_shards):
    return two_shards(
        [
            ("http://fine.example/a.jpg", "a bicycle", 0.1),
            (BLOCKED_URL, "secret caption", 0.2),
            (UNSAFE_URL, UNSAFE_CAPTION, 0.9),
        ]
    )


class Sensors:
    """The alert sensors ticked the way the daemon does: each tick gets the cursor the previous one returned.
    Built into the project's own definitions (as `assets/definitions.py` wires them), so they load with it."""

    def __init__(self, alert_settings: AlertSettings, settings: Settings, instance: dg.DagsterInstance | None):
        self.definitions = build_definitions(settings, alert_settings=alert_settings)
        dg.Definitions.validate_loadable(self.definitions)
        self.cursors: dict[str, str | None] = {}
        self.instance = instance
        self.resources = {"relaion": RelaionSettings.from_settings(settings)}

    def tick(self, name: str, times: int = 1) -> None:
        sensor = self.definitions.resolve_sensor_def(name)
        for _ in range(times):
            with dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursors.get(name),
                definitions=self.definitions,
                resources=self.resources,
            ) as context:
                self.cursors[name] = sensor(context).cursor


def _leaks(text: str) -> list[str]:
    return [s for s in (*ROW_DATA, PASSWORD, TOKEN, "query-secret") if s in text]


def _run_id(instance: dg.DagsterInstance, shard: str, status: dg.DagsterRunStatus) -> str:
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": shard}, statuses=[status]))
    return records[0].dagster_run.run_id


# --- end to end through the Dagster definitions ------------------------------------------------------------------


def test_failing_check_alerts_once_per_channel_then_once_resolved(settings, alert_settings, webhook, smtp, monkeypatch):
    original = variants.write_research_safe

    def keeps_unsafe_rows(shard_path, removed, roles, run_settings, destination):  # a filter bug on good-2 only
        if "good-2" in shard_path:
            run_settings = run_settings.with_(safe_threshold=1.0)
        return original(shard_path, removed, roles, run_settings, destination)

    monkeypatch.setattr(variants, "write_research_safe", keeps_unsafe_rows)
    monkeypatch.setattr(pipeline, "_take_staged_safe", lambda *args: None)  # written alone, with the bug
    summary = run_all(settings, progress=lambda line: None)

    by_name = {s.name: s for s in summary.shards}
    assert by_name["good-1"].ok
    assert by_name["good-2"].failed_checks == ["research_safe_below_threshold"]
    manifest, problems = release.verify(settings.release)
    assert problems == [] and list(manifest["shards"]) == ["good-1"]
    assert "good-2" in manifest["held_back"]

    instance = instance_for(settings)
    sensors = Sensors(alert_settings, settings, instance)
    for _ in range(3):  # several ticks of every sensor: still one alert per channel
        sensors.tick(CHECK_ALERTS)
        sensors.tick(RUN_ALERTS)  # the run failed only because of the check: reported once, by the check sensor

    run_id = _run_id(instance, "good-2", dg.DagsterRunStatus.FAILURE)
    assert len(webhook.received) == 1 and len(smtp.messages) == 1
    posted = webhook.received[0]
    assert posted["path"] == f"/services/{TOKEN}?token=query-secret"
    assert posted["type"] == "application/json"
    payload = json.loads(posted["body"])
    assert set(payload) == {"text", "blocks"}
    text = payload["text"]
    assert text.splitlines()[0] == "[relaion] shard good-2: blocking check research_safe_below_threshold failed"
    assert "failed research_safe_below_threshold (research_safe): " in text
    assert "expect_column_values_to_be_between(score): unexpected 1" in text
    assert f"link: {UI}/runs/{run_id}" in text
    assert f"<{UI}/runs/{run_id}|Open in Dagster>" in payload["blocks"][0]["text"]["text"]
    assert smtp.subjects() == ["[relaion] shard good-2: blocking check research_safe_below_threshold failed"]
    assert smtp.bodies()[0].strip() == text
    assert smtp.messages[0]["to"] == ["maintainers@example.org"] and smtp.messages[0]["login"] == "alerts"
    everything = posted["body"].decode() + smtp.messages[0]["raw"].decode()
    assert _leaks(everything) == []
    assert "good-2-2" not in everything, "sample row keys of the check stay in the check's own metadata"

    monkeypatch.setattr(variants, "write_research_safe", original)  # the bug is fixed; the shard is rerun
    assert run_all(settings, progress=lambda line: None).ok
    sensors.tick(CHECK_ALERTS, times=2)
    sensors.tick(RUN_ALERTS)

    assert len(webhook.received) == 2 and len(smtp.messages) == 2
    rerun_id = _run_id(instance, "good-2", dg.DagsterRunStatus.SUCCESS)
    resolved = webhook.texts()[1]
    assert resolved.splitlines()[0] == "[relaion] resolved: shard good-2 passes research_safe_below_threshold"
    assert f"{UI}/runs/{rerun_id}" in resolved
    assert smtp.subjects()[1] == "[relaion] resolved: shard good-2 passes research_safe_below_threshold"
    assert _leaks(webhook.received[1]["body"].decode() + smtp.messages[1]["raw"].decode()) == []


def test_failed_run_alerts_once_with_the_step_and_error_class_only(settings, alert_settings, webhook, smtp, tmp_path):
    good = (tmp_path / "shards" / "good-1.parquet").read_bytes()
    (tmp_path / "shards" / "good-2.parquet").unlink()
    (tmp_path / "shards" / "broken.parquet").write_bytes(good[: len(good) // 2])
    summary = run_all(settings, progress=lambda line: None)
    assert [s.name for s in summary.shards if not s.ok] == ["broken"]

    instance = instance_for(settings)
    sensors = Sensors(alert_settings, settings, instance)
    for _ in range(3):
        sensors.tick(RUN_ALERTS)
        sensors.tick(CHECK_ALERTS)  # the broken shard never reached its checks: nothing to say there

    assert len(webhook.received) == 1 and len(smtp.messages) == 1
    run_id = _run_id(instance, "broken", dg.DagsterRunStatus.FAILURE)
    assert webhook.texts()[0].splitlines() == [
        "[relaion] run failed: shard_job on shard broken",
        "job: shard_job",
        f"run: {run_id}",
        "shard: broken",
        "reason: STEP_FAILURE",
        "failed steps: removals (ShardError)",
        f"link: {UI}/runs/{run_id}",
    ]
    assert smtp.subjects() == ["[relaion] run failed: shard_job on shard broken"]
    everything = webhook.received[0]["body"].decode() + smtp.messages[0]["raw"].decode()
    assert "not a readable parquet file" not in everything and str(tmp_path) not in everything
    assert _leaks(everything) == []


def test_stale_blocklist_alerts_once_then_once_when_a_new_version_arrives(settings, alert_settings, webhook, smtp):
    pipeline.build_blocklist(settings)
    pointer = os.path.join(pipeline.Work(settings.work).blocklist_dir, "current.json")
    week_and_a_day = time.time() - 192 * 3600
    os.utime(pointer, (week_and_a_day, week_and_a_day))
    sensors = Sensors(alert_settings, settings, instance=None)

    sensors.tick(BLOCKLIST_ALERTS, times=3)
    assert len(webhook.received) == 1 and len(smtp.messages) == 1
    old_version = json.loads(open(pointer).read())["version"]
    assert webhook.texts()[0].splitlines()[:4] == [
        "[relaion] no new blocklist version for 192 hours (limit 168)",
        f"version: {old_version}",
        "age hours: 192",
        "limit hours: 168",
    ]

    pipeline.build_blocklist(settings)  # the same lists again: the same version, not a new one
    sensors.tick(BLOCKLIST_ALERTS)
    assert len(webhook.received) == 1

    with open(os.path.join(settings.blocklists, "iwf", "domain.txt"), "w") as lists:
        lists.write("newly-listed.example\n")
    pipeline.build_blocklist(settings)
    sensors.tick(BLOCKLIST_ALERTS, times=2)
    assert len(webhook.received) == 2 and len(smtp.messages) == 2
    new_version = json.loads(open(pointer).read())["version"]
    assert webhook.texts()[1].splitlines()[:3] == [
        f"[relaion] resolved: new blocklist version {new_version}",
        f"new version: {new_version}",
        f"previous version: {old_version}",
    ]


# --- channels ----------------------------------------------------------------------------------------------------

ALERT = alerts.Alert("check_failed", "[relaion] test alert", (("shard", "s-1"),), f"{UI}/runs/r-1")


def test_webhook_answering_500_is_retried_and_a_4xx_is_reported_without_the_token(webhook):
    settings = AlertSettings(webhook_url=webhook.url, retry_delay_seconds=0.01)
    webhook.statuses = [500]
    assert Notifier(settings).send(ALERT) == {}
    assert len(webhook.received) == 1, "delivered on the second attempt"

    webhook.statuses = [500, 503, 502]
    error = Notifier(settings).send(ALERT)["webhook"]
    assert error == f"webhook 127.0.0.1:{webhook.server.server_port}: HTTP 502 (gave up after 3 attempts)"

    webhook.statuses = [404, 200]
    error = Notifier(settings).send(ALERT)["webhook"]
    assert "HTTP 404" in error and "RELAION_ALERT_WEBHOOK_URL" in error
    assert webhook.statuses == [200], "a 404 is not retried"
    assert TOKEN not in error and "query-secret" not in error


def test_unreachable_webhook_names_the_channel_and_never_the_token():
    settings = AlertSettings(webhook_url=f"http://127.0.0.1:{_free_port()}/hooks/{TOKEN}", retries=1)
    error = Notifier(settings, sleep=lambda s: None).send(ALERT)["webhook"]
    assert error.startswith("webhook 127.0.0.1:") and "gave up after 2 attempts" in error
    assert TOKEN not in error


def test_channel_that_failed_is_retried_alone_on_the_next_tick(alert_settings, webhook, smtp):
    webhook.statuses = [500, 500, 500]
    notifier = Notifier(alert_settings)
    owed = notifier.deliver([ALERT], outbox=[])
    assert len(smtp.messages) == 1 and webhook.received == []
    assert [(o["channels"], o["attempts"]) for o in owed] == [(["webhook"], 1)]

    assert notifier.deliver([], owed) == []
    assert len(webhook.received) == 1 and len(smtp.messages) == 1, "email is not sent twice"


def test_no_channel_configured_means_the_alert_is_only_logged(caplog):
    assert AlertSettings().channels == ()
    with caplog.at_level("WARNING", logger="relaion_pipeline.alerting.alerts"):
        assert Notifier(AlertSettings()).deliver([ALERT], []) == []
    assert "(no channel configured: logged only): [relaion] test alert" in caplog.text


def test_smtp_login_refused_names_the_settings_and_not_the_password():
    mailbox = Mailbox()
    controller = _smtp_server(mailbox, auth_require_tls=False)
    try:
        settings = AlertSettings(
            smtp_host="127.0.0.1",
            smtp_port=controller.port,
            smtp_user="alerts",
            smtp_password="wrong-password",
            email_to=("m@x.org",),
            timeout_seconds=5,
        )
        error = Notifier(settings).send(ALERT)["email"]
    finally:
        controller.stop()
    assert error == (
        f"email via 127.0.0.1:{controller.port}: login as 'alerts' refused (SMTP 535): "
        "check RELAION_ALERT_SMTP_USER and RELAION_ALERT_SMTP_PASSWORD"
    )
    assert "wrong-password" not in error and mailbox.messages == []


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 (the server's) and a client context that trusts only it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))


def test_starttls_then_login_when_configured(certificate, monkeypatch):
    server_context, client_context = certificate
    monkeypatch.setattr(alert_channels, "_tls_context", lambda: client_context)
    mailbox = Mailbox()
    controller = _smtp_server(mailbox, tls_context=server_context, require_starttls=True, auth_require_tls=True)
    try:
        env = {
            "RELAION_ALERT_SMTP_HOST": "127.0.0.1",
            "RELAION_ALERT_SMTP_PORT": str(controller.port),
            "RELAION_ALERT_SMTP_USER": "alerts",  # a user turns STARTTLS on by default
            "RELAION_ALERT_SMTP_PASSWORD": PASSWORD,
            "RELAION_ALERT_EMAIL_TO": "a@example.org, b@example.org",
        }
        assert Notifier(AlertSettings.from_env(env)).send(ALERT) == {}
        assert [(m["tls"], m["login"], m["to"]) for m in mailbox.messages] == [
            (True, "alerts", ["a@example.org", "b@example.org"])
        ]

        plain = AlertSettings.from_env(env | {"RELAION_ALERT_SMTP_STARTTLS": "false"})
        error = Notifier(plain).send(ALERT)["email"]
        assert error == (
            f"email via 127.0.0.1:{controller.port}: the server does not offer AUTH; "
            "enable RELAION_ALERT_SMTP_STARTTLS, use port 465 or drop RELAION_ALERT_SMTP_USER"
        ), "this server offers login only after STARTTLS"
        assert len(mailbox.messages) == 1
    finally:
        controller.stop()


def test_starttls_configured_but_not_offered_is_a_clear_error(smtp):
    settings = AlertSettings(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=True, email_to=("m@x.org",))
    error = Notifier(settings).send(ALERT)["email"]
    assert error == (
        f"email via 127.0.0.1:{smtp.port}: the server does not offer STARTTLS; "
        "set RELAION_ALERT_SMTP_STARTTLS=false only for a relay on a trusted network"
    )


# --- settings and what an alert may say ---------------------------------------------------------------------------


def test_settings_from_env_defaults_and_errors():
    settings = AlertSettings.from_env({})
    assert settings.channels == () and settings.ui_url == "http://127.0.0.1:3000"
    assert settings.smtp_port == 587 and settings.blocklist_max_age_hours == 168
    settings = AlertSettings.from_env(
        {
            "RELAION_ALERT_WEBHOOK_URL": f"https://hooks.example.com/services/{TOKEN}",
            "RELAION_ALERT_SMTP_HOST": "smtp.example.com",
            "RELAION_ALERT_SMTP_PASSWORD": PASSWORD,
            "RELAION_ALERT_EMAIL_TO": "a@example.org,,b@example.org ",
            "RELAION_UI_URL": "https://dagster.example.org/",
            "RELAION_BLOCKLIST_MAX_AGE_HOURS": "24",
        }
    )
    assert settings.channels == ("webhook", "email") and settings.email_to == ("a@example.org", "b@example.org")
    assert settings.smtp_starttls is False, "no user: STARTTLS only when asked for"
    assert settings.run_link("r-1") == "https://dagster.example.org/runs/r-1"
    assert settings.blocklist_max_age_hours == 24
    assert TOKEN not in repr(settings) and PASSWORD not in repr(settings)

    with pytest.raises(AlertConfigError, match="RELAION_ALERT_SMTP_PORT='smtp': expected a int"):
        AlertSettings.from_env({"RELAION_ALERT_SMTP_PORT": "smtp"})
    with pytest.raises(AlertConfigError, match="RELAION_ALERT_EMAIL_TO names no recipient"):
        AlertSettings.from_env({"RELAION_ALERT_SMTP_HOST": "smtp.example.com"})
    with pytest.raises(AlertConfigError, match="RELAION_ALERT_SMTP_STARTTLS='maybe': expected true or false"):
        AlertSettings.from_env({"RELAION_ALERT_SMTP_STARTTLS": "maybe"})


def test_only_known_fields_of_check_metadata_reach_an_alert():
    failures = [
        {
            "expectation": "expect_column_values_to_be_between",
            "column": "score",
            "unexpected_count": 2,
            "observed": UNSAFE_URL,  # not a number: dropped
            "sample_row_keys": ["good-2-2"],
            "exception": f"ValueError: {UNSAFE_CAPTION}",
            "something_new": BLOCKED_URL,
        },
        {"expectation": f"<{BLOCKED_URL}>", "column": UNSAFE_CAPTION, "observed": 3},
    ]
    counts = alerts.failure_counts(failures)
    assert counts == ("expect_column_values_to_be_between(score): unexpected 2", "expectation(): observed 3")
    record = alerts.CheckRecord(
        1, "research_safe:research_safe_below_threshold", "en/part\n1", "r-1", "FAILED", counts=counts
    )
    alert = alerts.check_failed("en/part\n1", "r-1", [record], AlertSettings())
    assert alert.subject == "[relaion] shard en/part 1: blocking check research_safe_below_threshold failed"
    assert _leaks(alert.text() + json.dumps(alert.webhook_payload())) == []


def test_late_result_of_an_older_run_does_not_override_a_newer_one():
    def record(id, status, run):
        return alerts.CheckRecord(id, "a:c", "s", run, status)

    settings = AlertSettings()
    sent, state = alerts.track_checks({}, [record(1, "PENDING", "r1"), record(2, "FAILED", "r2")], settings)
    assert [a.kind for a in sent] == ["check_failed"] and state["floor"] == {"a:c": 0}
    sent, state = alerts.track_checks(state, [record(1, "PASSED", "r1"), record(2, "FAILED", "r2")], settings)
    assert sent == [], "r1 started first: its pass says nothing about r2's failure"
    sent, state = alerts.track_checks(state, [record(3, "ABANDONED", "r3"), record(4, "PASSED", "r4")], settings)
    assert [a.kind for a in sent] == ["check_resolved"] and state["floor"] == {"a:c": 4}
    assert state["last"] == {} and state["failing"] == {}
