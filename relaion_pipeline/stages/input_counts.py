"""The input check's counts: how many rows of a shard break each input rule, and a few of their row keys.

The removals stage counts them in its own pass over the shard (`columns` beside its own counts) and keeps
them in the cache (`remember`), so the input check (`checks.check_input`) validates them without reading the
shard again; the check counts them itself (`count`) when the cache has none for this shard file.
"""

from __future__ import annotations

from relaion_pipeline.core import cache, row_keys, shards, storage
from relaion_pipeline.core.schemas import quote
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.match import matching

# The input suite: (summary column, role it needs, SQL true for a row that breaks the rule, why); the SQL is a
# format string of the quoted column `c`, or a function of it.
RULES = [
    (
        "url_missing",
        "url",
        lambda c: f"{c} IS NULL OR {matching.blank_sql(c)}",
        "a row without a URL cannot be matched against the lists",
    ),
    ("url_too_long", "url", "length({c}) > 4096", "longer than 4096 characters is not a web image link"),
    ("punsafe_out_of_range", "punsafe", "NOT ({c} BETWEEN 0 AND 1)", "punsafe is a probability in [0, 1]"),
    ("pwatermark_out_of_range", "pwatermark", "NOT ({c} BETWEEN 0 AND 1)", "pwatermark is a probability in [0, 1]"),
    ("similarity_out_of_range", "similarity", "NOT ({c} BETWEEN -1 AND 1)", "CLIP cosine similarity lies in [-1, 1]"),
    # NaN is greater than every number in DuckDB (never <= 0), and infinity is not a size: both break the rule
    ("width_not_positive", "width", "{c} <= 0 OR NOT isfinite({c})", "an image has a positive, finite width"),
    ("height_not_positive", "height", "{c} <= 0 OR NOT isfinite({c})", "an image has a positive, finite height"),
]


def rules(roles) -> list[tuple[str, str, str]]:
    """(column, SQL condition, why) of each input rule the shard has the column for."""
    rules = [(column, quote(getattr(roles, role)), condition, why)
             for column, role, condition, why in RULES if getattr(roles, role)]  # fmt: skip
    return [(column, condition(c) if callable(condition) else condition.format(c=c), why)
            for column, c, condition, why in rules]  # fmt: skip


def columns(roles) -> dict[str, str]:
    """SQL per count of the input check (rows breaking each rule, repeated row keys), over the shard's rows:
    for one pass over the shard, its own or removals'."""
    counts = {column: f"count(*) FILTER (WHERE {condition})" for column, condition, _ in rules(roles)}
    if roles.key is not None:
        counts["duplicate_row_keys"] = f"count(*) - count(DISTINCT {quote(roles.key)})"
    return counts


def count(con, shard: shards.Shard, name: str, found: dict | None = None) -> dict:
    """The input check's counts (`found`, when another pass counted them) and a few row keys of the rows
    breaking each rule that some row breaks (as `row_keys` writes them)."""
    roles = shards.roles(shard)
    keys = row_keys.Writer(shard.path, roles, shards.open_parquet(shard.path).schema_arrow)
    source = f"read_parquet({storage.duckdb_path(shard.path)}, file_row_number = true)"
    if found is None:
        selected = ", ".join(f"{sql} AS {column}" for column, sql in columns(roles).items())
        found = con.sql(f"SELECT {selected} FROM {source}").to_arrow_table().to_pylist()[0]
    samples = {}
    for column, condition, _ in rules(roles):
        if found[column]:
            found_keys = con.sql(f"SELECT {roles.key_sql(name)} FROM {source} WHERE {condition} LIMIT 5").fetchall()
            samples[column] = keys.many(k for (k,) in found_keys)
    if roles.key is not None and found["duplicate_row_keys"]:
        found_keys = con.sql(
            f"SELECT CAST({quote(roles.key)} AS VARCHAR) FROM {source} GROUP BY 1 HAVING count(*) > 1 LIMIT 5"
        ).fetchall()
        samples["duplicate_row_keys"] = keys.many(k for (k,) in found_keys)
    return {"counts": found, "samples": samples}


def key(shard: shards.Shard, name: str) -> dict:
    """What the input check's counts depend on: the shard file, the rules and how rows are keyed."""
    roles = shards.roles(shard)
    return {"input": cache.fingerprint(shard.path), "rules": rules(roles), "key": roles.key_sql(name)}


def remember(settings: Settings, name: str, con, found: dict) -> None:
    """Keep the input check's counts that the removals stage made in its own pass over the shard
    (`columns`), with their sample row keys, for the check to validate without a pass of its own."""
    shard = shards.resolve(settings.shards, name)
    cache.value(
        settings.work,
        name,
        cache.INPUT_COUNTS,
        key(shard, name),
        lambda: count(con, shard, name, found),
    )
