"""What the unit tests of `validation.checks` read back: the record a check writes under the work location, and
proof that nothing a check leaves (its outcome, record or page) discloses a row's URL or caption."""

import hashlib
import json
from pathlib import Path

from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import quality


def record(settings: Settings, suite: str, name: str) -> dict:
    """The JSON record of `suite` on partition `name`."""
    return json.loads(Path(pipeline.Work(settings.work).validation(suite, name)).read_text())


def assert_recorded_for(settings: Settings, outcome: quality.Outcome, path) -> None:
    """The outcome is recorded (JSON and its page) for exactly the bytes of the file at `path`."""
    written = record(settings, outcome.suite, outcome.partition)
    data = Path(path).read_bytes()
    assert written["success"] is outcome.success and written["suite"] == outcome.suite
    assert (written["validated_sha256"], written["validated_bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
    page = Path(pipeline.Work(settings.work).validation(outcome.suite, outcome.partition)[: -len(".json")] + ".html")
    assert outcome.suite in page.read_text()


def assert_discloses_none(settings: Settings, outcome: quality.Outcome, *texts: str) -> None:
    """None of `texts` (a row's URL, caption or the host of its URL) is in the outcome's message, its record or
    its page."""
    json_path = Path(pipeline.Work(settings.work).validation(outcome.suite, outcome.partition))
    shown = [
        outcome.summary(),
        repr(outcome.failures),
        json_path.read_text(),
        json_path.with_suffix(".html").read_text(),
    ]
    for text in texts:
        assert not any(text in s for s in shown), f"{text!r} disclosed by {outcome.suite}"


def failed(outcome: quality.Outcome) -> dict:
    """{column: observed} of the outcome's failed expectations."""
    return {f.column: f.observed for f in outcome.failures}
