"""What the unit tests of `validation.checks` share: a workspace of one shard, a partner list and an image-hash
sidecar that the real stages turn into variants; the record a check writes under the work location; and proof
that nothing a check leaves (its outcome, record or page) discloses a row's URL or caption."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import BLOCKED_URL

from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import quality

NAME = "part-1"
IMAGE = b"the bytes of a listed image"
# The workspace's rows: (url, caption, punsafe). Its row keys are the URLs themselves, as in copies whose key
# column holds them: a check that wrote a row key as it is would disclose the URL.
ROWS = [
    ("http://fine.example/a.jpg", "a bicycle", 0.1),
    (BLOCKED_URL, "secret caption", 0.9),  # listed by URL (iwf, url_sha256)
    ("http://fine.example/listed-image.jpg", "listed image caption", 0.3),  # listed by image (iwf, image_md5)
    ("http://fine.example/keyword.jpg", "a forbiddenterm poster", 0.97),  # the keyword rule
    ("http://fine.example/d.jpg", "a teapot", 0.6),  # above the safe threshold: not in research-safe
    ("http://fine.example/e.jpg", "a kite", None),  # no score: in research-safe unless missing_score is drop
    ("http://fine.example/f.jpg", "a lighthouse", 0.2),
]
REMOVED = [1, 2, 3]  # rows the stages remove from research
UNSAFE = [4]  # rows of research that research-safe leaves out (by default settings)


def workspace(tmp_path: Path, **settings) -> Settings:
    """Shard NAME of ROWS (Re-LAION style), its image-hash sidecar, and partner list `iwf` listing row 1's URL
    and row 2's image; Settings of that workspace under `tmp_path` (`settings` override the defaults)."""
    for folder in ("shards", "sidecars", "lists/iwf"):
        (tmp_path / folder).mkdir(parents=True)
    urls, captions, scores = zip(*ROWS, strict=True)
    table = pa.table({"url": urls, "caption": captions, "key": urls, "punsafe": pa.array(scores, pa.float32())})
    pq.write_table(table, tmp_path / "shards" / f"{NAME}.parquet")
    images = [hashlib.md5(IMAGE if i == 2 else url.encode()).hexdigest() for i, url in enumerate(urls)]
    pq.write_table(pa.table({"key": urls, "md5": images}), tmp_path / "sidecars" / f"{NAME}.parquet")
    (tmp_path / "lists" / "iwf" / "url_sha256.txt").write_text(
        hashlib.sha256(BLOCKED_URL.removeprefix("http://").encode()).hexdigest() + "\n"
    )
    (tmp_path / "lists" / "iwf" / "image_md5.txt").write_text(hashlib.md5(IMAGE).hexdigest() + "\n")
    return Settings(
        shards=str(tmp_path / "shards"),
        blocklists=str(tmp_path / "lists"),
        sidecars=str(tmp_path / "sidecars"),
        work=str(tmp_path / "work"),
        release=str(tmp_path / "releases"),
        **settings,
    )


def with_settings(settings: Settings, **changed) -> Settings:
    return dataclasses.replace(settings, **changed)


def shard_path(settings: Settings) -> str:
    return f"{settings.shards}/{NAME}.parquet"


def row_texts(*rows: int) -> list[str]:
    """The URL, its host-less remainder and the caption of each of `rows`: what no check may disclose."""
    return [text for i in rows for text in (ROWS[i][0], ROWS[i][0].split("/", 3)[-1], ROWS[i][1])]


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
