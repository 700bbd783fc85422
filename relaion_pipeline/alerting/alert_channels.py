"""Delivering alerts: a Slack-compatible webhook and email over SMTP (STARTTLS and login when configured).

Errors name the channel and host only, never a webhook token or a password; failures that may pass are
retried, and an alert a channel could not take stays owed to that channel alone.

Why not Dagster's `make_slack_on_run_failure_sensor` or `make_email_on_run_failure_sensor`: by default they put
the run's error text into the message, and an error may quote a row's value; every text sent here is built by
`alerting.alerts` from counts, names and row keys alone. Two channels need no more than urllib and smtplib.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from relaion_pipeline.alerting.alerts import (
    EMAIL,
    OUTBOX_ATTEMPTS,
    OUTBOX_SIZE,
    WEBHOOK,
    Alert,
    AlertDeliveryError,
    AlertSettings,
)

logger = logging.getLogger("relaion_pipeline.alerting.alerts")


class TransientDeliveryError(AlertDeliveryError):
    """A failure that may pass on another attempt (5xx, 429, SMTP 4xx, connection errors, timeouts)."""


def _tls_context() -> ssl.SSLContext:
    """Certificate-verifying TLS for SMTP (a seam the tests replace to trust their own certificate)."""
    return ssl.create_default_context()


def channel_label(settings: AlertSettings, channel: str) -> str:
    """How errors name a channel: its host, never the webhook's path or query (where tokens live)."""
    if channel == WEBHOOK:
        parts = urlsplit(settings.webhook_url)
        return f"webhook {parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
    return f"email via {settings.smtp_host}:{settings.smtp_port}"


def post_webhook(settings: AlertSettings, alert: Alert) -> None:
    """POST the alert as Slack-compatible JSON with urllib; 5xx, 429 and connection errors are transient."""
    url, label = settings.webhook_url, channel_label(settings, WEBHOOK)
    request = urllib.request.Request(
        url,
        data=json.dumps(alert.webhook_payload()).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "relaion-pipeline-alerts"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:
            response.read()
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500 or error.code == 429:
            raise TransientDeliveryError(f"{label}: HTTP {error.code}") from None
        raise AlertDeliveryError(
            f"{label} refused the alert (HTTP {error.code}): check RELAION_ALERT_WEBHOOK_URL"
        ) from None
    except OSError as error:  # URLError, refused connections, timeouts, TLS errors
        reason = getattr(error, "reason", error)
        text, parts = str(reason), urlsplit(url)
        for secret in (url, parts.path, parts.query, parts.password):  # never echo a token back
            text = text.replace(secret, "") if secret and secret.strip("/") else text
        raise TransientDeliveryError(f"{label}: {type(reason).__name__}: {text}"[:300]) from None


def send_email(settings: AlertSettings, alert: Alert) -> None:
    """Send over SMTP: TLS from the start on port 465, else STARTTLS when configured; login when a user is set."""
    label, stage = channel_label(settings, EMAIL), "connect"
    sender = settings.email_from or (settings.smtp_user if "@" in settings.smtp_user else "relaion-pipeline@localhost")
    try:
        if settings.smtp_port == 465:
            smtp = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds, context=_tls_context()
            )
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds)
        with smtp:
            smtp.ehlo()
            if settings.smtp_starttls and settings.smtp_port != 465:
                stage = "STARTTLS"
                smtp.starttls(context=_tls_context())
                smtp.ehlo()
            if settings.smtp_user:
                stage = "AUTH"
                smtp.login(settings.smtp_user, settings.smtp_password)
            stage = "send"
            smtp.send_message(alert.email(sender, settings.email_to))
    except smtplib.SMTPNotSupportedError:
        fix = {
            "STARTTLS": "set RELAION_ALERT_SMTP_STARTTLS=false only for a relay on a trusted network",
            "AUTH": "enable RELAION_ALERT_SMTP_STARTTLS, use port 465 or drop RELAION_ALERT_SMTP_USER",
        }.get(stage, "check RELAION_ALERT_SMTP_HOST")
        raise AlertDeliveryError(f"{label}: the server does not offer {stage}; {fix}") from None
    except smtplib.SMTPAuthenticationError as error:
        raise AlertDeliveryError(
            f"{label}: login as {settings.smtp_user!r} refused (SMTP {error.smtp_code}): "
            "check RELAION_ALERT_SMTP_USER and RELAION_ALERT_SMTP_PASSWORD"
        ) from None
    except smtplib.SMTPRecipientsRefused as error:
        refused = ", ".join(error.recipients)
        raise AlertDeliveryError(f"{label}: recipients refused: {refused}: check RELAION_ALERT_EMAIL_TO") from None
    except smtplib.SMTPResponseException as error:
        kind = TransientDeliveryError if 400 <= error.smtp_code < 500 else AlertDeliveryError
        raise kind(f"{label}: SMTP {error.smtp_code} at {stage}") from None
    except (smtplib.SMTPException, OSError) as error:  # refused connections, timeouts, TLS errors
        raise TransientDeliveryError(f"{label}: {type(error).__name__} at {stage}: {error}"[:300]) from None


SENDERS: dict[str, Callable[[AlertSettings, Alert], None]] = {WEBHOOK: post_webhook, EMAIL: send_email}


class Notifier:
    """Sends alerts to every configured channel, retrying transient errors; logs every alert it sends."""

    def __init__(self, settings: AlertSettings, log=None, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.log = log or logger
        self.sleep = sleep

    def send(self, alert: Alert, channels: Iterable[str] | None = None) -> dict[str, str]:
        """Deliver to `channels` (default: every configured one); returns {channel: error} for those that failed."""
        errors = {}
        for channel in self.settings.channels if channels is None else channels:
            delay = self.settings.retry_delay_seconds
            for attempt in range(1, self.settings.retries + 2):
                try:
                    SENDERS[channel](self.settings, alert)
                    break
                except TransientDeliveryError as error:
                    if attempt > self.settings.retries:
                        errors[channel] = f"{error} (gave up after {attempt} attempts)"
                        break
                    self.sleep(delay)
                    delay *= 2
                except AlertDeliveryError as error:
                    errors[channel] = str(error)
                    break
        return errors

    def deliver(self, alerts: list[Alert], outbox: list[dict]) -> list[dict]:
        """Send new alerts and retry those still owed from earlier ticks; returns what is still owed (JSON).

        A channel that failed is retried alone on later ticks, so a channel that took the alert never gets it
        twice; after `OUTBOX_ATTEMPTS` ticks the alert is given up with an error in the log.
        """
        fresh = []
        for alert in alerts:
            note = "" if self.settings.channels else " (no channel configured: logged only)"
            resolved = alert.kind.endswith(("resolved", "refreshed"))
            (self.log.info if resolved else self.log.warning)(f"alert{note}: {alert.text()}")
            fresh.append({"alert": alert.to_json(), "channels": list(self.settings.channels), "attempts": 0})
        owed = []
        for item in [*outbox, *fresh]:
            alert = Alert.from_json(item["alert"])
            errors = self.send(alert, [c for c in item["channels"] if c in self.settings.channels])
            attempts = item["attempts"] + 1
            for error in errors.values():
                final = "giving up" if attempts >= OUTBOX_ATTEMPTS else "will retry on the next tick"
                self.log.error(f"alert '{alert.subject}' not delivered (attempt {attempts}, {final}): {error}")
            if errors and attempts < OUTBOX_ATTEMPTS:
                owed.append({"alert": item["alert"], "channels": sorted(errors), "attempts": attempts})
        return owed[-OUTBOX_SIZE:]
