"""Two promises users rely on: the same inputs give the same bytes, and a removed link is never written anywhere."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from assets.runner import run_all
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import release


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    demo.generate(root / "in", shards=4, rows=700, seed=21)
    return root


def _run(root, tag, monkeypatch, **overrides):
    monkeypatch.setenv("DAGSTER_HOME", str(root / "unused"))
    settings = Settings.layout(root / "in", root / tag, **overrides)
    return settings, run_all(settings, progress=lambda line: None)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_two_runs_give_identical_bytes_manifests_and_removals(inputs, monkeypatch):
    first_settings, first = _run(inputs, "one", monkeypatch)
    second_settings, second = _run(inputs, "two", monkeypatch)
    assert first.ok and second.ok
    one, two = Path(release.resolve(first_settings.release)), Path(release.resolve(second_settings.release))
    assert one.name == two.name, "same inputs, same release version"
    assert _digests(one) == _digests(two)
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (one, two)]
    for manifest in manifests:
        assert manifest.pop("created")
    assert manifests[0] == manifests[1]
    removals = [
        {str(p.relative_to(w)): pq.read_table(p).to_pylist() for p in sorted(w.rglob("*.parquet"))}
        for w in (inputs / "one" / "work" / "removals", inputs / "two" / "work" / "removals")
    ]
    assert removals[0] == removals[1] and removals[0]


def _removed_rows(root: Path, work: Path) -> tuple[set[str], set[str]]:
    """URLs and captions that only removed rows carry (a caption shared with a kept row is not a secret)."""
    removed_text, kept_text = set(), set()
    for path in sorted((root / "in" / "shards").rglob("*.parquet")):
        name = str(path.relative_to(root / "in" / "shards"))[: -len(".parquet")]
        removed = {r["row_number"] for r in pq.read_table(work / "removals" / f"{name}.parquet").to_pylist()}
        table = pq.read_table(path)
        url, text = ("url", "caption") if "url" in table.column_names else ("URL", "TEXT")
        for i, (u, t) in enumerate(zip(table.column(url).to_pylist(), table.column(text).to_pylist(), strict=True)):
            (removed_text if i in removed else kept_text).update(v.strip() for v in (u, t) if v and len(v.strip()) > 12)
    secrets = removed_text - kept_text
    urls = {s for s in secrets if "/" in s}
    return urls, secrets - urls


def _searchable(path: Path) -> bytes:
    """A file's bytes; for parquet, which is compressed, the text of its decoded values."""
    if path.suffix == ".parquet":
        return "\n".join(str(v) for column in pq.read_table(path).columns for v in column.to_pylist()).encode()
    return path.read_bytes()


def test_no_artifact_holds_a_removed_url_or_caption(inputs, monkeypatch):
    broken = inputs / "in" / "shards" / "joined" / "part-99999.parquet"
    good = (inputs / "in" / "shards" / "joined" / "part-00000.parquet").read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # a failing partition too: its error text is an artifact
    try:
        settings, summary = _run(inputs, "privacy", monkeypatch)
    finally:
        broken.unlink()
    assert not summary.ok and any(s.name == "joined/part-99999" and not s.ok for s in summary.shards)
    urls, captions = _removed_rows(inputs, inputs / "privacy" / "work")
    assert len(urls) > 30 and len(captions) > 5
    needles = [u.encode() for u in urls] + [c.encode() for c in captions]
    artifacts = [p for p in (inputs / "privacy").rglob("*") if p.is_file()]
    inputs_text = b"".join(_searchable(p) for p in (inputs / "in" / "shards").rglob("*.parquet"))
    assert all(needle in inputs_text for needle in needles), "positive control: the search finds them in the input"
    assert any(p.suffix == ".db" for p in artifacts), "Dagster's SQLite event log and run storage are searched"
    assert any("compute_logs" in str(p) for p in artifacts), "Dagster's captured logs are searched"
    for path in artifacts:
        data = _searchable(path)
        for needle in needles:
            assert needle not in data, f"{path.relative_to(inputs)} holds a removed row's URL or caption"
