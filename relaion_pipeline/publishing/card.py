"""The release's dataset card (`README.md`): what the release holds and how to load, verify and use it.

Its YAML header declares the configs `datasets.load_dataset(<release folder>, <config>)` reads. A reader loads
a config as one table, so every file of a config must have the same columns: a release whose shards all share
one schema has the plain `research` and `research-safe` configs; one whose shards come in several schemas (the
families of `core.schemas`, LAION-5B joined beside Re-LAION style, or one family with and without a column) has
a config per variant and schema, `<variant>-<family>`, each listing its files and its own row count.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing.manifest import REMOVAL_LIST
from relaion_pipeline.stages.work import RESEARCH, RESEARCH_SAFE

VARIANTS = (RESEARCH, RESEARCH_SAFE)


@dataclass(frozen=True)
class Config:
    """One config of the card: a variant's files that share one schema."""

    name: str  # `research`, or `research-laion-joined` where the release holds several schemas
    variant: str
    family: str
    shards: tuple[str, ...]
    rows: int
    data_bytes: int
    columns: tuple[str, ...]
    folder: str | None  # `research/joined/`: the folder holding exactly this config's files, if there is one

    @property
    def files(self) -> list[str]:
        return [f"{self.variant}/{name}.parquet" for name in self.shards]

    @property
    def data_files(self) -> list[str]:
        """What the YAML header declares: one glob over the variant when the release has one schema, else each
        file (its name escaped: `datasets` reads `[`, `*` and `?` in data_files as patterns)."""
        if self.name == self.variant:
            return [f"{self.variant}/**/*.parquet"]
        return [glob.escape(file) for file in self.files]


def columns(schema: pa.Schema) -> tuple[str, ...]:
    """A shard's columns as `name: type`, what its config is keyed by: files that agree on them read as one table."""
    return tuple(f"{field.name}: {field.type}" for field in schema)


@dataclass(frozen=True)
class Footers:
    """What the card needs of a published shard's files, read from their parquet footers."""

    columns: tuple[str, ...]  # `columns` of its research file (research-safe keeps the same schema)
    data_bytes: dict[str, int]  # per variant, the uncompressed size of its data: the `num_bytes` of a split

    @classmethod
    def read(cls, files: dict[str, pq.ParquetFile]) -> Footers:
        """From the shard's research and research-safe files."""
        sizes = {
            variant: sum(file.metadata.row_group(i).total_byte_size for i in range(file.metadata.num_row_groups))
            for variant, file in files.items()
        }
        return cls(columns(files[RESEARCH].schema_arrow), sizes)


def configs(manifest: dict, footers: dict[str, Footers]) -> list[Config]:
    """The card's configs, by variant then schema: `footers` gives each shard's columns and sizes, the manifest
    its family and the rows of each file. Schemas of one family after its first are numbered (`laion-plain-2`) in the order of
    their first shard's name."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in sorted(manifest["shards"]):
        groups.setdefault(footers[name].columns, []).append(name)
    named, seen = {}, {}
    for schema, names in groups.items():
        family = manifest["shards"][names[0]]["family"]
        seen[family] = seen.get(family, 0) + 1
        named[schema] = family if seen[family] == 1 else f"{family}-{seen[family]}"
    single = len(groups) == 1
    found = []
    for variant in VARIANTS:
        for schema, names in groups.items():
            found.append(
                Config(
                    name=variant if single else f"{variant}-{named[schema]}",
                    variant=variant,
                    family=manifest["shards"][names[0]]["family"],
                    shards=tuple(names),
                    rows=sum(manifest["shards"][n]["files"][variant]["rows"] for n in names),
                    data_bytes=sum(footers[n].data_bytes[variant] for n in names),
                    columns=tuple(column.split(": ", 1)[0] for column in schema),
                    folder=_folder(variant, names, groups),
                )
            )
    return found


def _folder(variant: str, names: list[str], groups: dict) -> str | None:
    """`<variant>/<top>/` when every shard of `names` sits under one top-level folder that holds no other shard."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or "/" not in names[0]:
        return None
    (top,) = tops
    others = (n for members in groups.values() if members is not names for n in members)
    return None if any(n.split("/", 1)[0] == top for n in others) else f"{variant}/{top}/"


def _header(settings: Settings, manifest: dict, found: list[Config]) -> str:
    listed = "\n".join(
        f"- config_name: {c.name}\n  data_files:" + "".join(f"\n  - {json.dumps(f)}" for f in c.data_files)
        for c in found
    )
    info = "\n".join(
        f"- config_name: {c.name}\n  splits:\n  - name: train\n    num_bytes: {c.data_bytes}\n    num_examples: {c.rows}"
        for c in found
    )
    return f"""---
license: {settings.license}
pretty_name: Re-LAION release (blocklist {manifest["blocklist_version"]})
tags:
- image-text
- laion
configs:
{listed}
dataset_info:
{info}
---
"""


def _config_table(found: list[Config]) -> str:
    """Which config holds what, when the release has several schemas (empty when it has one)."""
    if all(c.name == c.variant for c in found):
        return ""
    rows = "\n".join(
        f"| `{c.name}` | {c.rows:,} | {len(c.shards)} | "
        f"{f'`{c.folder}`' if c.folder else 'listed in its `data_files`'} | "
        f"{', '.join(f'`{column}`' for column in c.columns)} |"
        for c in found
    )
    families = len(found) // len(VARIANTS)
    return f"""
## Configs

The shards come in {families} schemas, which no reader takes as one table, so each variant has a config per
schema, named after its family (`family` of each shard in `manifest.json`). To read a config with polars,
DuckDB, pandas or `pyarrow.dataset`, give them its folder (below) or its files.

| config | rows | shards | files | columns |
|---|---:|---:|---|---|
{rows}
"""


def dataset_card(manifest: dict, settings: Settings, removal_list: dict, footers: dict[str, Footers]) -> str:
    """The Hugging Face dataset card. It does not name the release's version: the version is a digest of the
    manifest, which lists this card's sha256."""
    totals = manifest["totals"]
    found = configs(manifest, footers)
    removal = (
        f"`{REMOVAL_LIST}` lists the `hash` (mmh3 of url + text, as in LAION-5B) of every row a copy must drop "
        "to become research-safe."
        if removal_list["published"]
        else f"The removal list is withheld: {removal_list['reason']}."
    )
    example = next(c.name for c in found if c.variant == RESEARCH_SAFE)
    return f"""{_header(settings, manifest, found)}
# Re-LAION release

Image-text metadata (URLs, captions, scores; no images), cleaned against hash lists from child-protection
partners (blocklist version `{manifest["blocklist_version"]}`) by relaion-pipeline {manifest["code_version"]}.

- **research**: every row that matched a partner list removed, and rows with punsafe above
  {settings.research_threshold} (in shards without punsafe, an NSFW tag of {settings.unsafe_tags}) whose caption
  hits the child-safety keyword list ({totals["rows_research"]:,} rows).
- **research-safe**: research minus rows with punsafe above {settings.safe_threshold} (in shards without punsafe,
  an NSFW tag of {settings.unsafe_tags}) ({totals["rows_research_safe"]:,} rows).
{_config_table(found)}
Load a config with `datasets`: `load_dataset("<this release>", "{example}")`.

Each shard keeps exactly the columns and types of the original, so it replaces it file for file.
`manifest.json` holds the row count and sha256 of every file: check a download with `relaion verify <this release>`.
`transparency.md` counts removals by source, category and shard. {removal}

Clean an old copy: `relaion clean --release <this release> --input <old copy> --output <cleaned copy>{"" if removal_list["published"] else " --by difference"}`.{_changes(manifest)}
"""


def _changes(manifest: dict) -> str:
    """What the card says about shards this release does not hold: held back (and whether the operator asked
    to publish without them) and left since the previous release."""
    lines = []
    if manifest["held_back"]:
        asked = (
            " The operator asked to publish without them (allow_partial_release)."
            if manifest["settings"]["allow_partial_release"]
            else ""
        )
        names = ", ".join(f"`{name}`" for name in manifest["held_back"])
        lines.append(f"Held back (failed or not current; see `transparency.md`): {names}.{asked}")
    if manifest["settings"]["skip_image_matching"]:
        lines.append("Shards without an image-hash sidecar were matched by URL only (skip_image_matching).")
    if manifest["left"]:
        names = ", ".join(f"`{name}`" for name in manifest["left"])
        lines.append(f"No longer in the input since the previous release: {names}.")
    return "\n\n" + "\n\n".join(lines) if lines else ""
