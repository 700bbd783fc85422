"""A release loads, config by config, in the readers dataset users reach for: `datasets.load_dataset(<release
folder>, <config>)` with the rows its card states, and each variant in polars, DuckDB, pandas and pyarrow.dataset.
Every command the card prints works as written. Two releases of one run: the demo's shards in four schema
families, and the shards of one family published on their own."""

import glob
import re
import shutil
from dataclasses import replace
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from assets.runner import run_all
from relaion_pipeline.cli import main
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.publishing import card, release
from relaion_pipeline.publishing import manifest as manifests

JOINED = ["joined/part-00000", "joined/part-00004"]  # the demo's shards 0 and 4 are both LAION-5B joined
FAMILIES = {"joined": "laion-joined", "plain": "laion-plain", "relaion": "relaion", "minimal": "minimal"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One run over 5 small demo shards (four families), its release, and a release of its joined shards alone."""
    root = tmp_path_factory.mktemp("loaders")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "unused"))
        demo.generate(root / "in", shards=5, rows=150, seed=5)
        settings = Settings.layout(root / "in", root)
        assert run_all(settings, progress=lambda line: None).ok
    one = release.publish(replace(settings, release=str(root / "one-family")), JOINED)
    return {"root": root, "several": Path(release.resolve(settings.release)), "one": Path(one["path"])}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """`datasets`, fully offline, its caches under a temporary folder (set before it is imported: it reads them
    then)."""
    home = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("HF_HOME", str(home))):
            patch.setenv(name, value)
        import datasets

        yield datasets, home / "cache"


def _card(published: Path) -> tuple[dict, str]:
    """The card's YAML header, parsed, and its text."""
    _, header, text = (published / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(header), text


def _configs(published: Path) -> dict[str, dict]:
    """config name -> its files (as `datasets` resolves data_files) and the rows dataset_info states."""
    header, _ = _card(published)
    rows = {info["config_name"]: info["splits"][0]["num_examples"] for info in header["dataset_info"]}
    assert [c["config_name"] for c in header["configs"]] == list(rows)
    found = {}
    for config in header["configs"]:
        patterns = config["data_files"] if isinstance(config["data_files"], list) else [config["data_files"]]
        files = sorted({f for p in patterns for f in glob.glob(p, root_dir=published, recursive=True)})
        found[config["config_name"]] = {"files": files, "rows": rows[config["config_name"]]}
    return found


def _variant(config: str) -> str:
    return "research-safe" if config.startswith("research-safe") else "research"


@pytest.mark.parametrize("which", ["several", "one"])
def test_the_card_has_a_config_per_variant_and_schema_holding_every_file_once(run, which):
    published = run[which]
    manifest = manifests.read(str(published))
    configs = _configs(published)
    if which == "one":
        assert list(configs) == ["research", "research-safe"], "one family: the plain configs"
    else:
        assert sorted(configs) == sorted(f"{v}-{f}" for v in ("research", "research-safe") for f in FAMILIES.values())
    for variant in ("research", "research-safe"):
        held = sorted(f for name, c in configs.items() if _variant(name) == variant for f in c["files"])
        assert held == sorted(entry["files"][variant]["path"] for entry in manifest["shards"].values())
    for name, config in configs.items():
        schemas = {pq.read_schema(published / f).remove_metadata() for f in config["files"]}
        assert len(schemas) == 1, f"{name}: its files have one schema"
        by_path = {e["files"][_variant(name)]["path"]: e for e in manifest["shards"].values()}
        assert config["rows"] == sum(by_path[f]["files"][_variant(name)]["rows"] for f in config["files"]) > 0
        assert len({by_path[f]["family"] for f in config["files"]}) == 1
    assert {e["family"] for e in manifest["shards"].values()} == (
        {"laion-joined"} if which == "one" else set(FAMILIES.values())
    )


@pytest.mark.parametrize("which", ["several", "one"])
def test_every_config_loads_in_datasets_with_the_rows_the_card_states(run, hf, which):
    datasets, cache = hf
    published = run[which]
    for name, config in _configs(published).items():
        loaded = datasets.load_dataset(str(published), name, split="train", cache_dir=str(cache))
        columns = pq.read_schema(published / config["files"][0]).names
        assert (loaded.num_rows, loaded.column_names) == (config["rows"], columns), name


@pytest.mark.parametrize("which", ["several", "one"])
def test_each_variant_loads_per_family_in_polars_duckdb_pandas_and_pyarrow(run, which):
    """Where the card says a config's files are (one folder per family in the demo's layout; the variant's folder
    for one family), each reader takes them as one table with the config's rows and the shards' columns."""
    published = run[which]
    _, text = _card(published)
    folders = dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| \d+ \| `([^`]+)` \|", text, re.MULTILINE))
    configs = _configs(published)
    if which == "one":
        assert not folders, "one family: no table of configs"
        folders = {name: f"{name}/" for name in configs}
    assert sorted(folders) == sorted(configs)
    for name, folder in folders.items():
        where, rows = published / folder, configs[name]["rows"]
        assert sorted(str(p.relative_to(published)) for p in where.rglob("*.parquet")) == configs[name]["files"]
        columns = pq.read_schema(published / configs[name]["files"][0]).names
        files = f"{where}/**/*.parquet"
        frame = pl.read_parquet(files)
        assert (frame.height, frame.columns) == (rows, columns), f"polars {name}"
        ((counted,),) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{files}')").fetchall()
        described = [r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{files}')").fetchall()]
        assert (counted, described) == (rows, columns), f"duckdb {name}"
        table = pd.read_parquet(where)
        data = [c for c in columns if c != "__index_level_0__"]  # pandas gives its index back as the index
        assert (len(table), table.columns.tolist()) == (rows, data), f"pandas {name}"
        dataset = ds.dataset(where, format="parquet")
        assert (dataset.count_rows(), dataset.schema.names) == (rows, columns), f"pyarrow.dataset {name}"


@pytest.mark.parametrize("which", ["several", "one"])
def test_every_command_the_card_prints_works_as_written(run, hf, tmp_path, which):
    datasets, cache = hf
    published = run[which]
    _, text = _card(published)
    old = tmp_path / "old"
    for name in JOINED if which == "one" else manifests.read(str(published))["shards"]:
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run["root"] / "in" / "shards" / f"{name}.parquet", old / f"{name}.parquet")
    places = {"<this release>": str(published), "<old copy>": str(old), "<cleaned copy>": str(tmp_path / "cleaned")}

    def filled(command: str) -> str:
        for placeholder, value in places.items():
            command = command.replace(placeholder, value)
        assert "<" not in command, f"a placeholder the test does not know: {command}"
        return command

    commands = re.findall(r"`(relaion [^`]+|load_dataset\([^`]+\))`", text)
    assert sorted(c.split()[1] if c.startswith("relaion") else "load_dataset" for c in commands) == [
        "clean",
        "load_dataset",
        "verify",
    ]
    for command in commands:
        if command.startswith("relaion "):
            assert main(filled(command).split()[1:]) == 0, command
        else:
            path, config = re.fullmatch(r'load_dataset\("([^"]+)", "([^"]+)"\)', filled(command)).groups()
            assert datasets.load_dataset(path, config, split="train", cache_dir=str(cache)).num_rows > 0
    cleaned = sorted(str(p.relative_to(tmp_path / "cleaned")) for p in (tmp_path / "cleaned").rglob("*.parquet"))
    assert cleaned == sorted(f"{name}.parquet" for name in manifests.read(str(published))["shards"])


@pytest.mark.parametrize("which", ["several", "one"])
def test_every_paragraph_of_the_card_ends_with_a_full_stop(run, which):
    _, text = _card(run[which])
    paragraphs = [p.strip() for p in text.split("\n\n")]
    prose = [p for p in paragraphs if p and not p.startswith(("#", "|", "- ", "!["))]
    assert prose and [p for p in prose if not p.endswith(".")] == []


def test_a_family_in_two_schemas_and_folders_shared_by_families_get_configs_that_load(hf, tmp_path):
    """Beyond the demo's layout: LAION-5B joined shards with and without LANGUAGE (one family, two schemas), a
    folder holding two families, and a name `datasets` would read as a pattern (`part-[0]`). The card, written
    for these files, declares configs that load with the rows it states, each naming its folder only where the
    folder holds that config alone."""
    datasets, cache = hf
    joined = {"URL": ["http://a.example/1.jpg"], "TEXT": ["a"], "hash": [1], "punsafe": pa.array([0.1], pa.float32())}
    tables = {
        "en/part-0": pa.table(joined),
        "en/re-0": pa.table({"url": ["http://b.example/2.jpg"] * 2, "caption": ["b", "c"], "key": ["k1", "k2"]}),
        "multi/part-1": pa.table(joined | {"LANGUAGE": ["de"]}),
        "multi/part-[0]": pa.concat_tables([pa.table(joined | {"LANGUAGE": ["fr"]})] * 3),
    }
    families = {"en/part-0": "laion-joined", "en/re-0": "relaion", "multi/part-1": "laion-joined"}
    families["multi/part-[0]"] = "laion-joined"
    entries = {}
    for name, table in tables.items():
        for variant in ("research", "research-safe"):
            (tmp_path / variant / name).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp_path / variant / f"{name}.parquet")
        files = {v: {"path": f"{v}/{name}.parquet", "rows": table.num_rows} for v in ("research", "research-safe")}
        entries[name] = {"family": families[name], "files": files}
    manifest = {
        "blocklist_version": "0" * 16,
        "code_version": "test",
        "shards": entries,
        "totals": {"rows_research": 7, "rows_research_safe": 7},
        "held_back": {},
        "left": {},
        "settings": {"allow_partial_release": False, "skip_image_matching": False},
    }
    text = card.dataset_card(
        manifest, Settings(), {"published": False, "reason": "too few neutral removals"},
        {n: card.Footers.read({v: pq.ParquetFile(tmp_path / v / f"{n}.parquet") for v in card.VARIANTS}) for n in tables},
    )  # fmt: skip
    (tmp_path / "README.md").write_text(text)

    configs = _configs(tmp_path)
    expected = {"laion-joined": 1, "relaion": 2, "laion-joined-2": 4}
    assert configs == {
        f"{variant}-{schema}": {"rows": rows, "files": sorted(f"{variant}/{n}.parquet" for n in tables if (
            families[n] == schema.removesuffix("-2") and ("multi" in n) == schema.endswith("-2")))}
        for variant in ("research", "research-safe")
        for schema, rows in expected.items()
    }  # fmt: skip
    for name, config in configs.items():
        loaded = datasets.load_dataset(str(tmp_path), name, split="train", cache_dir=str(cache))
        assert loaded.num_rows == config["rows"], name
    folders = dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| \d+ \| ([^|]+) \|", text, re.MULTILINE))
    assert folders["research-safe-laion-joined-2"] == "`research-safe/multi/`"
    assert folders["research-laion-joined"] == "listed in its `data_files`"

    (tmp_path / "README.md").write_text(text.replace("num_examples: 4", "num_examples: 5", 1))  # a card that lies
    with pytest.raises(datasets.exceptions.NonMatchingSplitsSizesError):
        datasets.load_dataset(str(tmp_path), "research-laion-joined-2", split="train", cache_dir=str(tmp_path / "c"))
