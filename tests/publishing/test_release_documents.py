"""A release's dataset card, transparency report and removal list: useful to people, silent about matches."""

import json
from pathlib import Path

import mmh3
import pyarrow.parquet as pq
import pytest
import yaml

from assets.runner import run_all
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import release


def _run(root: Path, **overrides) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "unused"))
        demo.generate(root / "in", shards=4, rows=800, seed=11)
        settings = Settings.layout(root / "in", root, **overrides)
        summary = run_all(settings, progress=lambda line: None)
    assert summary.ok
    return Path(release.resolve(settings.release))


# Two runs that the tests only read: one with the defaults (the removal list withheld), one that publishes it.
@pytest.fixture(scope="module")
def withheld(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("withheld")
    return root, _run(root)


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("listed")
    return root, _run(root, removal_list_max_match_share=1.0)


def _secrets(tmp_path):
    """Every URL and caption of every row that any list or rule removed."""
    planted = json.loads((tmp_path / "in" / "planted.json").read_text())
    out = set()
    for path in (tmp_path / "work" / "removals").rglob("*.parquet"):
        name = str(path.relative_to(tmp_path / "work" / "removals"))[: -len(".parquet")]
        rows = {r["row_number"] for r in pq.read_table(path).to_pylist()}
        table = pq.read_table(tmp_path / "in" / "shards" / f"{name}.parquet")
        url = "URL" if "URL" in table.column_names else "url"
        text = "TEXT" if "TEXT" in table.column_names else "caption"
        for i in rows:
            out.add(table.column(url)[i].as_py().strip())
            if table.column(text)[i].as_py():
                out.add(table.column(text)[i].as_py())
    assert len(out) > 40 and planted
    return out


def test_card_and_transparency_report_count_without_revealing(withheld):
    tmp_path, published = withheld
    manifest = json.loads((published / "manifest.json").read_text())
    card = (published / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    header = yaml.safe_load(card.split("---\n")[1])
    safe = [c for c in header["dataset_info"] if c["config_name"].startswith("research-safe-")]
    assert len(safe) == 4, "a research-safe config per schema family"
    assert sum(c["splits"][0]["num_examples"] for c in safe) == manifest["totals"]["rows_research_safe"]
    report = json.loads((published / "transparency.json").read_text())
    assert sum(s["rows_removed"] for s in report["shards"].values()) == manifest["totals"]["rows_removed"]
    sources = {"partner-a", "partner-b", "hrw-privacy", "opt-out", "pdq-partner", "keyword-list"}
    assert set(report["removed_rows_by_source"]) == sources
    assert not manifest["removal_list"]["published"], "demo lists are far above 1% of removals"
    picture = (published / "removals-per-shard.png").read_bytes()
    assert picture.startswith(b"\x89PNG") and len(picture) > 5_000
    assert "![Removals per shard](removals-per-shard.png)" in (published / "transparency.md").read_text()
    assert manifest["documents"]["removals-per-shard.png"]["bytes"] == len(picture)
    plots = sorted(p.relative_to(tmp_path / "work" / "plots") for p in (tmp_path / "work" / "plots").rglob("*.png"))
    assert [str(p) for p in plots] == ["joined/part-00000.png", "relaion/part-00002.png"], "shards with punsafe"
    assert "withheld" in card and not (published / "removal-list.parquet").exists()

    removal_keys = set()
    for path in (tmp_path / "work" / "removals").rglob("*.parquet"):
        removal_keys |= {r["row_key"] for r in pq.read_table(path).to_pylist()}
    for document in ("README.md", "transparency.md", "transparency.json", "manifest.json"):
        text = (published / document).read_text()
        for secret in _secrets(tmp_path):
            assert secret not in text, f"{document} reveals a removed row"
        for key in removal_keys:
            assert f'"{key}"' not in text and f"`{key}`" not in text, f"{document} names a matched row key"


@pytest.mark.parametrize("family", ["joined", "plain", "relaion", "minimal"])
def test_removal_list_holds_laion_hashes_of_every_row_missing_from_research_safe(listed, family):
    tmp_path, published = listed
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["removal_list"]["published"]
    listed = set(pq.read_table(published / "removal-list.parquet").column("hash").to_pylist())
    name = next(n for n in manifest["shards"] if n.startswith(family))
    source = pq.read_table(tmp_path / "in" / "shards" / f"{name}.parquet").to_pylist()
    safe = pq.read_table(published / "research-safe" / f"{name}.parquet").to_pylist()
    url, text = ("url", "caption") if "url" in source[0] else ("URL", "TEXT")

    def laion_hash(row):
        return row["hash"] if "hash" in row else mmh3.hash64(f"{row[url]}{row[text] or ''}".encode(), signed=True)[0]

    kept = {laion_hash(r) for r in safe}
    missing = {laion_hash(r) for r in source} - kept
    assert missing and missing <= listed
    assert not (kept & listed), "no kept row is listed for removal"


@pytest.mark.parametrize("by", ["removal-list", "difference"])
def test_clean_turns_an_old_copy_into_research_safe(listed, tmp_path, by):
    from relaion_pipeline.publishing import clean

    root, published = listed
    result = clean.clean(str(root / "releases"), str(root / "in" / "shards"), str(tmp_path / "cleaned"), by=by,
                         progress=lambda line: None)  # fmt: skip
    manifest = json.loads((published / "manifest.json").read_text())
    for name in manifest["shards"]:
        cleaned = pq.read_table(tmp_path / "cleaned" / f"{name}.parquet")
        assert cleaned.equals(pq.read_table(published / "research-safe" / f"{name}.parquet")), name
    report = json.loads((tmp_path / "cleaned" / "clean-report.json").read_text())
    assert (
        report == result
        and report["rows_removed"] == manifest["totals"]["rows_in"] - manifest["totals"]["rows_research_safe"]
    )


def test_clean_by_removal_list_explains_when_the_list_is_withheld(withheld, tmp_path):
    from relaion_pipeline.publishing import clean

    root, _ = withheld
    with pytest.raises(
        clean.CleanError, match=r"no removal list \(rows matching a list would be .* use --by difference"
    ):
        clean.clean(str(root / "releases"), str(root / "in" / "shards"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["withheld", "listed"])
def test_the_cards_clean_command_works_as_written(request, tmp_path, which):
    """The card tells how to clean an old copy; the command it gives runs, with or without a removal list."""
    import re

    from relaion_pipeline.cli import main

    root, published = request.getfixturevalue(which)
    card = (published / "README.md").read_text()
    (command,) = re.findall(r"Clean an old copy: `([^`]+)`", card)
    assert ("--by difference" in command) == (which == "withheld")
    words = command.replace("<this release>", str(root / "releases")).replace("<old copy>", str(root / "in" / "shards"))
    words = words.replace("<cleaned copy>", str(tmp_path / "cleaned")).split()
    assert words[0] == "relaion" and main(words[1:]) == 0
    assert (tmp_path / "cleaned" / "clean-report.json").exists()
