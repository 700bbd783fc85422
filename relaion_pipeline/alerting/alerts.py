"""Alerts to maintainers: which shard, which check or run, how many rows, and a link to the run in the UI.

Maintainers should learn that a shard was held back, a run failed or partner lists stopped arriving without
watching the Dagster UI. Channels are configured in one place (`AlertSettings.from_env`): a Slack-compatible
webhook and/or email over SMTP; with none configured, alerts are only logged.

An alert is built from known fields only (shard, check, run id, expectation, counts), never from free text of
the data or of check metadata, so it cannot carry a URL or caption of a row into a chat room or a mailbox. It
never carries a secret either. Delivery (webhook, SMTP) lives in `relaion_pipeline.alerting.alert_channels`.

The bookkeeping that turns check results into exactly one alert per failure (and one when it clears) is plain
functions over JSON-ready state here, so the Dagster sensors (`assets/alerts.py`) only fetch records and keep
that state in their cursors.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import urlsplit

from relaion_pipeline.core import storage
from relaion_pipeline.lists import blocklists

WEBHOOK = "webhook"
EMAIL = "email"
OUTBOX_ATTEMPTS = 5  # sensor ticks an undelivered alert is retried on before it is given up (and logged)
OUTBOX_SIZE = 100
DEFAULT_UI_URL = "http://127.0.0.1:3000"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:\-]{0,159}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

logger = logging.getLogger(__name__)


class AlertConfigError(ValueError):
    """An alert setting that cannot work; the message names the environment variable to fix."""


class AlertDeliveryError(RuntimeError):
    """A channel that did not take the alert; the message names the channel and host, never a token or password."""


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise AlertConfigError(f"{name}={raw!r}: expected true or false")


def _number(environ: Mapping[str, str], name: str, default: float, kind: type = float):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise AlertConfigError(f"{name}={raw!r}: expected a {kind.__name__}") from None


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go. Secrets are kept out of `repr` so that logging the settings never shows them."""

    webhook_url: str = field(default="", repr=False)  # its path often is the token (Slack incoming webhooks)
    smtp_host: str = ""
    smtp_port: int = 587  # 465 means TLS from the first byte (SMTPS)
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    email_from: str = ""
    email_to: tuple[str, ...] = ()
    ui_url: str = DEFAULT_UI_URL
    blocklist_max_age_hours: float = 168.0
    timeout_seconds: float = 10.0
    retries: int = 2  # extra attempts per delivery for errors that may pass (5xx, 429, connection errors)
    retry_delay_seconds: float = 1.0  # doubled after each attempt

    def __post_init__(self):
        if self.webhook_url and urlsplit(self.webhook_url).scheme not in ("http", "https"):
            raise AlertConfigError("RELAION_ALERT_WEBHOOK_URL must start with https:// (or http://)")
        if self.smtp_host and not self.email_to:
            raise AlertConfigError("RELAION_ALERT_SMTP_HOST is set but RELAION_ALERT_EMAIL_TO names no recipient")
        if self.email_to and not self.smtp_host:
            raise AlertConfigError("RELAION_ALERT_EMAIL_TO is set but RELAION_ALERT_SMTP_HOST is empty")
        if not 0 < self.smtp_port < 65536:
            raise AlertConfigError(f"RELAION_ALERT_SMTP_PORT={self.smtp_port}: expected a port from 1 to 65535")
        if self.blocklist_max_age_hours <= 0:
            raise AlertConfigError("RELAION_BLOCKLIST_MAX_AGE_HOURS must be above 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        """Settings from `RELAION_ALERT_*`, `RELAION_UI_URL` and `RELAION_BLOCKLIST_MAX_AGE_HOURS`."""
        env = os.environ if environ is None else environ
        user = env.get("RELAION_ALERT_SMTP_USER", "").strip()
        return cls(
            webhook_url=env.get("RELAION_ALERT_WEBHOOK_URL", "").strip(),
            smtp_host=env.get("RELAION_ALERT_SMTP_HOST", "").strip(),
            smtp_port=_number(env, "RELAION_ALERT_SMTP_PORT", 587, int),
            smtp_user=user,
            smtp_password=env.get("RELAION_ALERT_SMTP_PASSWORD", ""),
            smtp_starttls=_flag(env, "RELAION_ALERT_SMTP_STARTTLS", default=bool(user)),
            email_from=env.get("RELAION_ALERT_EMAIL_FROM", "").strip(),
            email_to=tuple(a.strip() for a in env.get("RELAION_ALERT_EMAIL_TO", "").split(",") if a.strip()),
            ui_url=env.get("RELAION_UI_URL", "").strip() or DEFAULT_UI_URL,
            blocklist_max_age_hours=_number(env, "RELAION_BLOCKLIST_MAX_AGE_HOURS", 168.0),
        )

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c for c, on in ((WEBHOOK, self.webhook_url), (EMAIL, self.smtp_host)) if on)

    def run_link(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"


# --- what an alert says ---------------------------------------------------------------------------------------


def _name(value: object, pattern: re.Pattern = _NAME) -> str | None:
    """An identifier (check, expectation, column, step, error class) or None: never arbitrary text."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _shard(value: object) -> str:
    """A shard (partition) name as one printable line; it is a path under the shard location, not row data."""
    return _CONTROL.sub(" ", str(value or "(no partition)"))[:200]


def _count(value: object) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def failure_counts(failures: object) -> tuple[str, ...]:
    """Check metadata `failures` (a list of dicts) reduced to expectation, column and counts. Every other field
    (sample row keys, exception text, anything added later) is dropped on purpose."""
    lines = []
    for failure in failures if isinstance(failures, list) else []:
        if not isinstance(failure, dict):
            continue
        what = _name(failure.get("expectation")) or "expectation"
        column = _name(failure.get("column"))
        parts = [
            f"{label} {_count(failure.get(key))}"
            for key, label in (("unexpected_count", "unexpected"), ("observed", "observed"))
            if _count(failure.get(key)) is not None
        ]
        lines.append(f"{what}({column or ''}): " + (", ".join(parts) or "failed"))
    return tuple(lines[:10])


@dataclass(frozen=True)
class Alert:
    """One message: a subject and labelled facts, every one of them from a known field."""

    kind: str  # check_failed, check_resolved, run_failed, blocklist_stale, blocklist_refreshed
    subject: str
    facts: tuple[tuple[str, str], ...]
    link: str = ""

    def text(self) -> str:
        lines = [self.subject, *(f"{label}: {value}" for label, value in self.facts)]
        return "\n".join(lines + ([f"link: {self.link}"] if self.link else []))

    def webhook_payload(self) -> dict:
        """Slack-compatible: `text` for any receiver (and notifications), `blocks` for Slack itself."""

        def esc(value: str) -> str:
            return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        body = f"*{esc(self.subject)}*\n" + "\n".join(f"• {esc(k)}: {esc(v)}" for k, v in self.facts)
        if self.link:
            body += f"\n<{self.link}|Open in Dagster>"
        return {"text": self.text(), "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}]}

    def email(self, sender: str, recipients: Iterable[str]) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = self.subject
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["X-Relaion-Alert"] = self.kind
        message.set_content(self.text() + "\n")
        return message

    def to_json(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "facts": [list(f) for f in self.facts], "link": self.link}

    @classmethod
    def from_json(cls, value: dict) -> Alert:
        return cls(value["kind"], value["subject"], tuple((k, v) for k, v in value["facts"]), value.get("link", ""))


@dataclass(frozen=True)
class CheckRecord:
    """One execution of an asset check on one shard, as the check sensor sees it."""

    id: int  # increases in the order the checks were planned
    check: str  # "<asset>:<check name>"
    shard: str
    run_id: str
    status: str  # PASSED, FAILED, PENDING (run still going) or ABANDONED (run ended before the check)
    blocking: bool = True
    counts: tuple[str, ...] = ()  # from `failure_counts`


def check_failed(shard: str, run_id: str, records: list[CheckRecord], settings: AlertSettings) -> Alert:
    names = [_name(r.check.rpartition(":")[2]) or "check" for r in records]
    what = f"blocking check {names[0]}" if len(names) == 1 else f"{len(names)} blocking checks"
    facts = [("shard", _shard(shard)), ("run", run_id)]
    for record, name in zip(records, names, strict=True):
        asset = _name(record.check.rpartition(":")[0], _KEY) or "asset"
        facts.append((f"failed {name} ({asset})", "; ".join(record.counts) or "see the run"))
    if any(r.blocking for r in records):
        facts.append(("effect", "this shard is held back from the release until a rerun passes its checks"))
    return Alert(
        "check_failed", f"[relaion] shard {_shard(shard)}: {what} failed", tuple(facts), settings.run_link(run_id)
    )


def check_resolved(shard: str, run_id: str, checks: list[str], settings: AlertSettings) -> Alert:
    names = ", ".join(_name(c.rpartition(":")[2]) or "check" for c in checks)
    facts = (("shard", _shard(shard)), ("run", run_id), ("passed again", names))
    return Alert(
        "check_resolved", f"[relaion] resolved: shard {_shard(shard)} passes {names}", facts, settings.run_link(run_id)
    )


def run_failed(
    job: str,
    run_id: str,
    shard: str | None,
    steps: list[tuple[str, str]],
    reason: str,
    attempts: int,
    settings: AlertSettings,
) -> Alert:
    """`steps` are (step key, error class); the error's message is left out because it may quote row data."""
    failed = ", ".join(f"{_name(s, _KEY) or 'step'} ({_name(e) or 'error'})" for s, e in steps) or "none"
    where = f" on shard {_shard(shard)}" if shard else ""
    facts = [("job", _name(job, _KEY) or "job"), ("run", run_id)] + ([("shard", _shard(shard))] if shard else [])
    facts += [("reason", _name(reason) or "unknown"), ("failed steps", failed)]
    if attempts > 1:
        facts.append(("attempts", str(attempts)))
    subject = f"[relaion] run failed: {_name(job, _KEY) or 'job'}{where}"
    return Alert("run_failed", subject, tuple(facts), settings.run_link(run_id))


# --- one alert per failure: state kept between sensor ticks ---------------------------------------------------


def track_checks(
    state: dict, records: Iterable[CheckRecord], settings: AlertSettings, bootstrap: bool = False
) -> tuple[list[Alert], dict]:
    """Alerts for checks that started failing on a shard, and for failing ones that passed again.

    `state` (JSON) holds per check the `floor` (record ids at or below it are settled), per (check, shard) the
    last record id handled (so a late result of an older run never overrides a newer one) and the pairs now
    failing. A rerun that fails again sends nothing: the failure is already reported. On the first tick
    (`bootstrap`) only each pair's latest result counts, so history does not replay as alerts.
    """
    floor: dict[str, int] = dict(state.get("floor", {}))
    last: dict[str, dict[str, int]] = {c: dict(v) for c, v in state.get("last", {}).items()}
    failing: dict[str, dict[str, str]] = {c: dict(v) for c, v in state.get("failing", {}).items()}
    records = sorted(records, key=lambda r: r.id)
    settled = [r for r in records if r.status in ("PASSED", "FAILED")]
    if bootstrap:
        latest = {(r.check, r.shard): r for r in settled}
        settled = sorted(latest.values(), key=lambda r: r.id)
    failed: dict[tuple[str, str], list[CheckRecord]] = {}
    resolved: dict[tuple[str, str], list[str]] = {}
    for record in settled:
        seen = last.setdefault(record.check, {})
        if record.id <= seen.get(record.shard, -1):
            continue
        seen[record.shard] = record.id
        now_failing = failing.setdefault(record.check, {})
        if record.status == "FAILED" and record.shard not in now_failing:
            now_failing[record.shard] = record.run_id
            failed.setdefault((record.shard, record.run_id), []).append(record)
        elif record.status == "PASSED" and record.shard in now_failing:
            del now_failing[record.shard]
            resolved.setdefault((record.shard, record.run_id), []).append(record.check)
    for check in {r.check for r in records}:
        pending = [r.id for r in records if r.check == check and r.status == "PENDING"]
        floor[check] = min(pending) - 1 if pending else max(r.id for r in records if r.check == check)
    for check, shards in last.items():  # ids at or below the floor can never come back
        last[check] = {s: i for s, i in shards.items() if i > floor.get(check, -1)}
    alerts = [check_failed(s, run, rs, settings) for (s, run), rs in failed.items()]
    alerts += [check_resolved(s, run, cs, settings) for (s, run), cs in resolved.items()]
    new_state = {
        "floor": floor,
        "last": {c: v for c, v in last.items() if v},
        "failing": {c: v for c, v in failing.items() if v},
    }
    return alerts, new_state


def blocklist_written(directory: str) -> tuple[str, float] | None:
    """Version of the current blocklist and when its pointer (`current.json`) was written, or None before the
    first build."""
    pointer = blocklists.read_pointer(directory)
    if not pointer:
        return None
    fs, root = storage.filesystem(directory)
    info = fs.info(f"{root.rstrip('/')}/current.json")
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    written = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or time.time())
    return str(pointer["version"]), written


def track_blocklist(
    state: dict, current: tuple[str, float] | None, now: float, settings: AlertSettings
) -> tuple[list[Alert], dict]:
    """One alert when no new blocklist version arrived within `blocklist_max_age_hours`, one when it does.

    A rebuild that yields the same version (same lists) rewrites `current.json` but is not new: `since` keeps
    the time this version was first seen.
    """
    if current is None:
        return [], dict(state)
    version, written = current
    link = f"{settings.ui_url.rstrip('/')}/assets/blocklist"
    limit = settings.blocklist_max_age_hours
    alerts = []
    if state.get("version") != version:
        if state.get("alerted"):
            age = (written - state["since"]) / 3600
            facts = (("new version", version), ("previous version", state["version"]), ("hours between", f"{age:.0f}"))
            alerts.append(
                Alert("blocklist_refreshed", f"[relaion] resolved: new blocklist version {version}", facts, link)
            )
        state = {"version": version, "since": written, "alerted": False}
    age = (now - state["since"]) / 3600
    if age > limit and not state.get("alerted"):
        facts = (
            ("version", version),
            ("age hours", f"{age:.0f}"),
            ("limit hours", f"{limit:g}"),
            ("action", "ask the partners for their current lists, or raise RELAION_BLOCKLIST_MAX_AGE_HOURS"),
        )
        alerts.append(
            Alert(
                "blocklist_stale",
                f"[relaion] no new blocklist version for {age:.0f} hours (limit {limit:g})",
                facts,
                link,
            )
        )
        state = {**state, "alerted": True}
    return alerts, dict(state)
