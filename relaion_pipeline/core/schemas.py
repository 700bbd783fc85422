"""Schema families of LAION-style shards and the canonical roles the pipeline reads from them.

A shard's own columns are never renamed or retyped: the pipeline only needs to know which column plays which
role (row key, url, caption, safety score, NSFW tag, size) and how to build a stable row key.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# The removals table a shard's removals stage writes: one row per (row, entry) that matched; never a URL.
REMOVALS = pa.schema(
    [
        ("row_number", pa.int64()),
        ("row_key", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("category", pa.string()),
        ("hash", pa.string()),
        ("match", pa.string()),
        ("distance", pa.int16()),  # Hamming distance of a pdq match, null for every other kind
    ]
)


# Columns pandas adds when a frame's index is written to parquet.
PANDAS_INDEX_COLUMNS = ("__index_level_0__", "Unnamed: 0", "index")


class ShardSchemaError(ValueError):
    """A shard whose columns do not fit any known schema family."""


@dataclass(frozen=True)
class Roles:
    """Which column of a shard plays which role; None where the family has no such column."""

    family: str
    url: str
    caption: str | None
    key: str | None  # None: the row key is "<shard>:<row number>"
    punsafe: str | None = None
    nsfw: str | None = None
    width: str | None = None
    height: str | None = None
    similarity: str | None = None
    pwatermark: str | None = None

    def key_sql(self, shard: str, row_number: str = "file_row_number") -> str:
        """DuckDB expression of the row key as VARCHAR."""
        if self.key is None:
            return f"{sql_string(shard + ':')} || CAST({row_number} AS VARCHAR)"
        return f"CAST({quote(self.key)} AS VARCHAR)"


def quote(column: str) -> str:
    """Quote a column name for DuckDB."""
    return '"' + column.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    """Quote a string literal for DuckDB."""
    return "'" + value.replace("'", "''") + "'"


def _pick(names: set[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in names), None)


def is_text(kind: pa.DataType) -> bool:
    """Strings however a writer stored them: plain, large, view, or dictionary-encoded (pandas categoricals,
    Spark and pyarrow's `use_dictionary` writers); DuckDB and the variants read them all as the same text."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def unique_names(schema: pa.Schema, source: str) -> None:
    """Fail naming the column when two columns share a name: which one a role means would be a guess (pyarrow
    refuses to choose, DuckDB renames one), and a published shard must keep exactly the input's columns."""
    seen = set()
    for name in schema.names:
        if name in seen:
            raise ShardSchemaError(
                f"{source}: column {name!r} appears {schema.names.count(name)} times; expected each column name once"
            )
        seen.add(name)


def detect(schema: pa.Schema, source: str) -> Roles:
    """Map a shard's schema to roles; `source` names the file in errors."""
    unique_names(schema, source)
    names = set(schema.names)
    if "url" in names and "caption" in names:
        return Roles(
            family="relaion",
            url="url",
            caption="caption",
            key=_pick(names, "key", "hash"),
            punsafe=_pick(names, "punsafe"),
            nsfw=_pick(names, "nsfw", "NSFW"),
            width=_pick(names, "original_width", "width"),
            height=_pick(names, "original_height", "height"),
            similarity=_pick(names, "similarity"),
            pwatermark=_pick(names, "pwatermark"),
        )
    if "URL" in names and "TEXT" in names:
        common = dict(
            url="URL",
            caption="TEXT",
            punsafe=_pick(names, "punsafe"),
            nsfw=_pick(names, "NSFW"),
            width=_pick(names, "WIDTH"),
            height=_pick(names, "HEIGHT"),
            similarity=_pick(names, "similarity"),
            pwatermark=_pick(names, "pwatermark"),
        )
        if "SAMPLE_ID" in names:
            return Roles(family="laion-plain", key="SAMPLE_ID", **common)
        if "hash" in names:
            return Roles(family="laion-joined", key="hash", **common)
        return Roles(family="minimal", key=None, **common)
    found = ", ".join(schema.names) or "none"
    raise ShardSchemaError(
        f"{source}: no known schema family: expected a URL column ('URL' with 'TEXT', or 'url' with 'caption');"
        f" found columns: {found}"
    )


def check_types(schema: pa.Schema, roles: Roles, source: str) -> None:
    """Fail with a clear message when a role's column has a type the pipeline cannot use."""
    for role, column in (("url", roles.url), ("caption", roles.caption)):
        if column is None:
            continue
        kind = schema.field(column).type
        if not is_text(kind):
            raise ShardSchemaError(f"{source}: column {column!r} ({role}) must hold strings, found {kind}")
    for role in ("punsafe", "width", "height", "similarity", "pwatermark"):  # what the rules compare with numbers
        column = getattr(roles, role)
        if column is None:
            continue
        kind = schema.field(column).type
        numeric = pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind)
        if not (numeric or pa.types.is_null(kind)):  # a column of nulls only (no score known) breaks no rule
            raise ShardSchemaError(f"{source}: column {column!r} ({role}) must be numeric, found {kind}")
