"""Matching a shard against the merged blocklist, set-oriented in DuckDB.

One query per shard: canonicalize every URL, expand it to its lookup expressions, hash them, and join the hashes
with the list; domains join on every suffix of the host, image hashes through the shard's sidecar (PDQ
hashes within the source's distance, see `relaion_pipeline.match.near_matching`), and the research keyword rule is a
filter on score and caption. The result is the removals table: row number, row key, kind, source, category, the matching hash
(the list value), the scope it hit (`url`, `path`, `host`, `image`, `image-near` or `caption`) and, for PDQ,
the distance. It never holds a URL, an expression's text or a caption.

Most URLs are regular (`http(s)://host/path?query` with nothing to unescape or resolve): DuckDB canonicalizes
those itself. The rest (escapes, IP hosts, dot segments, non-ASCII, ...) go through the reference implementation
in `relaion_pipeline.canonical.urls` as a vectorized UDF, so both paths give exactly the reference result. Only that UDF
meets non-ASCII hosts, so only it gives a row a second host form (`urls.host_forms`: the IDNA form), a second
row of `canonical` with the same row number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from relaion_pipeline.canonical import url_sql
from relaion_pipeline.core import db, schemas, shards, storage
from relaion_pipeline.core.schemas import quote, sql_string
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import DOMAIN, PDQ, SIDECAR_EXACT, URL_DERIVED, URL_EXPRESSION, by_name
from relaion_pipeline.match import near_matching

KEYWORD_KIND = "keyword"
KEYWORD_SOURCE = "keyword-list"
KEYWORD_CATEGORY = "unsafe-caption"
# A scheme other than http(s) (`ftp://`, `mailto:`, `data:`); `host:8080/...` is a port, not a scheme.
OTHER_SCHEME = r"^\s*[A-Za-z][A-Za-z0-9+.\-]*:([^0-9]|$)"
HTTP_SCHEME = r"^\s*https?:"


def connect(settings: Settings | None = None, writes_inputs: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection of `db.connect` with the pipeline's UDF: the reference canonicalization for the URLs
    the SQL tier leaves (`url_sql`)."""
    con = db.connect(settings, writes_inputs)
    con.create_function(
        "relaion_canonical",
        url_sql._canonical_udf,
        [duckdb.sqltype("VARCHAR")],
        duckdb.sqltype(url_sql.CANONICAL_TYPE),
        type="arrow",
        null_handling="special",
    )
    return con


def read_keywords(path: str) -> str:
    """The text of the keyword file, or an error naming it, the setting and what was expected."""
    where = f"keyword file {path} (setting keywords: --keywords, RELAION_KEYWORDS)"
    try:
        fs, inner = storage.filesystem(path)
        data = fs.cat_file(inner)
    except FileNotFoundError:
        raise ValueError(f"{where}: does not exist, expected a text file with one keyword per line") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: is a folder, expected a text file with one keyword per line") from None
    if b"\0" in data:
        raise ValueError(f"{where}: holds binary data, expected UTF-8 text with one keyword per line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{where}: line {line} is not UTF-8, expected UTF-8 text") from None


def keyword_pattern(path: str) -> str | None:
    """A case-insensitive whole-word RE2 pattern for the keyword file, or None when it lists nothing."""
    words = [line.split("#", 1)[0].strip() for line in read_keywords(path).splitlines()]
    words = [w for w in words if w]
    if not words:
        return None
    escaped = [re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", w.lower()) for w in words]
    return r"(?i)(?:^|[^\pL\pN_])(?:" + "|".join(escaped) + r")(?:[^\pL\pN_]|$)"


PDQ_MATCHES = "relaion_pdq_matches"  # the near matches of `near_matching.shard_matches`, registered by name
IMAGE_HITS = "relaion_image_hits"  # the exact image hash matches of `image_hits`, registered by name
IMAGE_ROWS = "relaion_image_rows"  # the shard's rows of those matches (`image_rows_sql`), registered by name
(_IMAGE_LABEL,) = {by_name(k).label for k in SIDECAR_EXACT}  # one `match` for every exact image hash kind


@dataclass(frozen=True)
class MatchInputs:
    """What one shard is matched with."""

    shard_name: str
    shard_path: str
    roles: schemas.Roles
    blocklist_path: str
    sidecar_path: str | None  # None: no sidecar for this shard
    sidecar_columns: tuple[str, ...] = ()  # which of md5/sha1/sha256/pdq/pdq_quality the sidecar has


def score_above(column: str, threshold: float) -> str:
    """SQL true where the score `column` (quoted) is above `threshold`, compared as DOUBLE. DuckDB casts a
    literal to a FLOAT column's type: `punsafe > 0.1` is false for the float32 0.1 (0.10000000149...), which is
    above 0.1 and which research-safe (pyarrow) leaves out."""
    return f"CAST({column} AS DOUBLE) > CAST({float(threshold)!r} AS DOUBLE)"


def unsafe_condition(roles: schemas.Roles, threshold: float, settings: Settings) -> str | None:
    """SQL that is true for rows whose safety score is above `threshold`; None when the shard has no score.
    The score is compared as the number it is (`score_above`), as pyarrow and pandas compare it."""
    if roles.punsafe is not None:
        return score_above(quote(roles.punsafe), threshold)
    if roles.nsfw is not None and settings.unsafe_tag_values:
        tags = ", ".join(sql_string(t) for t in settings.unsafe_tag_values)
        return f"{quote(roles.nsfw)} IN ({tags})"
    return None


def _src_sql(inputs: MatchInputs, where: str = "") -> str:
    """SQL: the shard's rows as the removals query matches them (row_number, row_key, url); `where`: a filter
    on the file's own columns (and file_row_number), which the scan applies itself."""
    return f"""
        SELECT file_row_number AS row_number, {inputs.roles.key_sql(inputs.shard_name)} AS row_key,
               {quote(inputs.roles.url)} AS url
        FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)
        {f"WHERE {where}" if where else ""}"""


FEW_CANDIDATES = 1_000  # up to this many candidate rows, the shard's scan filters on their row numbers itself


def candidate_rows_sql(inputs: MatchInputs, candidates: str | list[int]) -> str:
    """SQL: the `src` rows of `removals_sql` whose row number is one of `candidates`: a relation with a
    row_number column, or the row numbers themselves (at most FEW_CANDIDATES). Taken beforehand, so that
    DuckDB knows how few they are: estimating a fifth of the shard, it built its hash tables of the list's
    entries instead of these rows' lookup expressions (2 x 2M entries of a 20M-row shard's list, ~200 MiB).

    Given the row numbers, the scan filters on them and reads the URLs and keys of the row groups and vectors
    that hold one: 15 rows of a 20M-row shard, 1.2 s / 463 MiB -> 0.3 s / 270 MiB (a join with the relation
    decodes every URL). Beyond a thousand rows spread over the shard, the join is faster."""
    if isinstance(candidates, list):
        listed = ", ".join(str(int(row)) for row in candidates) or "NULL"
        return _src_sql(inputs, f"file_row_number IN ({listed})")
    return f"SELECT s.* FROM ({_src_sql(inputs)}) s SEMI JOIN {candidates} k ON k.row_number = s.row_number"


def removals_sql(inputs: MatchInputs, kinds: set[str], settings: Settings, candidates: str | None = None) -> str:
    """The whole matching query for one shard; `kinds` are the kinds present in the blocklist.

    With `candidates` (a relation of the `src` rows, row_number, row_key and url, that can match a URL or domain
    entry: e.g. those the lookup-hash index names, `candidate_rows_sql`), URLs are canonicalized and matched only
    on those rows; image hashes and the keyword rule still cover every row.
    """
    roles = inputs.roles
    parts = [  # never materialized: DuckDB would keep every URL of the shard, every list entry, for their readers
        f"src AS NOT MATERIALIZED ({_src_sql(inputs)})",
        f"bl AS NOT MATERIALIZED (SELECT * FROM read_parquet({storage.duckdb_path(inputs.blocklist_path)}))",  # read per kind
    ]
    selects = []
    if kinds & set(URL_DERIVED):
        parts.append(f"url_src AS (SELECT * FROM {candidates or 'src'})")
        parts.append(url_sql.canonical_parts_sql("url_src"))
    if kinds & set(URL_EXPRESSION):
        parts.append(url_sql.EXPRESSIONS_SQL)
        for kind in (by_name(k) for k in URL_EXPRESSION if k in kinds):
            selects.append(f"""
        SELECT e.row_number, e.row_key, b.kind, b.source, b.category, b.value AS hash, e.scope AS match, NULL::SMALLINT
        FROM expressions e JOIN bl b ON b.kind = {kind.sql} AND b.value = {kind.digest}(e.expression)""")
    if DOMAIN.name in kinds:
        selects.append(f"""
        SELECT c.row_number, c.row_key, b.kind, b.source, b.category, b.value AS hash, {sql_string(DOMAIN.label)} AS match, NULL::SMALLINT
        FROM (SELECT row_number, row_key, unnest(
                CASE WHEN starts_with(host, '[') THEN [host] ELSE list_transform(
                    range(1, len(string_split(host, '.')) + 1),
                    lambda i: array_to_string(string_split(host, '.')[i:], '.')) END) AS suffix
              FROM canonical) c
        JOIN bl b ON b.kind = {DOMAIN.sql} AND b.value = c.suffix""")
    if image_kinds(inputs, kinds):  # exact image hash matches, found beforehand by _run (`image_rows_sql`)
        selects.append(f"""
        SELECT row_number, row_key, kind, source, category, hash, {sql_string(_IMAGE_LABEL)} AS match, NULL::SMALLINT FROM {IMAGE_ROWS}""")
    if near_kinds(inputs, kinds):  # found by the compiled multi-index (near_matching), registered beforehand by _run
        selects.append(f"""
        SELECT row_number, row_key, kind, source, category, hash, match, distance FROM {PDQ_MATCHES}""")
    pattern = keyword_pattern(settings.keywords)
    unsafe = unsafe_condition(roles, settings.research_threshold, settings)
    if pattern and unsafe and roles.caption:
        selects.append(f"""
        SELECT file_row_number, {roles.key_sql(inputs.shard_name)}, '{KEYWORD_KIND}', '{KEYWORD_SOURCE}',
               '{KEYWORD_CATEGORY}', NULL, 'caption', NULL::SMALLINT
        FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)
        WHERE {unsafe} AND regexp_matches({quote(roles.caption)}, {sql_string(pattern)})""")
    if not selects:
        selects.append(
            "SELECT * FROM (SELECT 0::BIGINT, ''::VARCHAR, '', '', '', ''::VARCHAR, '', NULL::SMALLINT) WHERE false"
        )
    union = "\n        UNION ALL".join(selects)
    return f"""
    WITH {", ".join(parts)},
    matches AS ({union})
    SELECT DISTINCT * FROM matches
    ORDER BY ALL"""


def image_kinds(inputs: MatchInputs, kinds: set[str]) -> list[str]:
    """The image-hash kinds of the list that the shard's sidecar has a column for."""
    if not inputs.sidecar_path:
        return []
    return [k for k in SIDECAR_EXACT if k in kinds and by_name(k).sidecar_column in inputs.sidecar_columns]


def lower_hex_sql(column: str) -> str:
    """SQL: the sidecar hash `column` as lower-case text, as list values are. lower() runs only on values with
    an upper-case hex digit (A-F): a value without one can equal a list value only as it is, and lower() on
    every value took most of an image-hash join (1.4 s of 17M md5s, against 1.0 s)."""
    text = f"CAST({column} AS VARCHAR)"
    upper = " OR ".join(f"contains({text}, '{letter}')" for letter in "ABCDEF")
    return f"(CASE WHEN {upper} THEN lower({text}) ELSE {text} END)"


def list_kinds(con: duckdb.DuckDBPyConnection, blocklist_path: str) -> set[str]:
    """The kinds of entries that the merged list file holds."""
    query = f"SELECT DISTINCT kind FROM read_parquet({storage.duckdb_path(blocklist_path)})"
    return {k for (k,) in con.sql(query).fetchall()}


IMAGE_HITS_SCHEMA = pa.schema(
    [("sidecar_row", pa.int64()), *((name, pa.string()) for name in ("key", "kind", "source", "category", "hash"))]
)


def image_hits(con: duckdb.DuckDBPyConnection, inputs: MatchInputs, kinds: set[str]) -> pa.Table:
    """(sidecar row number, key, kind, source, category, hash) of every sidecar row whose image hash a list
    entry has: the sidecar
    joined with the list alone, so that only these few rows meet the shard's row keys (joining every sidecar
    row with the shard would hold a hash table of all its keys). Sorted; none without image kinds."""
    if not image_kinds(inputs, kinds):
        return IMAGE_HITS_SCHEMA.empty_table()
    selects = [
        f"""SELECT c.file_row_number AS sidecar_row, CAST(c.key AS VARCHAR) AS key, b.kind, b.source, b.category,
               b.value AS hash
        FROM read_parquet({storage.duckdb_path(inputs.sidecar_path)}, file_row_number = true) c
        JOIN (SELECT * FROM read_parquet({storage.duckdb_path(inputs.blocklist_path)}) WHERE kind = '{kind}') b
          ON b.value = {lower_hex_sql("c." + by_name(kind).sidecar_column)}"""
        for kind in image_kinds(inputs, kinds)
    ]
    return con.sql(" UNION ALL ".join(selects) + " ORDER BY ALL").to_arrow_table().cast(IMAGE_HITS_SCHEMA)


def image_rows_sql(inputs: MatchInputs, hits: str) -> str:
    """SQL: the shard's rows whose row key the image hits `hits` (a relation of `image_hits`) name, as removals
    rows (row_number, row_key, kind, source, category, hash). With an integer key column the few keys are turned
    into numbers and filter the scan itself (`key_in_sql`), instead of every row's key becoming text to meet
    them (a 20M-row rerun with the same list: 2.7 s -> 1.8-2.1 s)."""
    roles = inputs.roles
    among = key_in_sql(roles, integer_key(inputs.shard_path, roles), f"SELECT key FROM {hits}") if roles.key else ""
    return f"""
    SELECT s.row_number, s.row_key, h.kind, h.source, h.category, h.hash
    FROM ({_src_sql(inputs, among)}) s JOIN {hits} h ON s.row_key = h.key"""


def near_kinds(inputs: MatchInputs, kinds: set[str]) -> bool:
    """Whether the removals query reads PDQ near matches: the list has pdq entries and the sidecar PDQ hashes."""
    return PDQ.name in kinds and inputs.sidecar_path is not None and PDQ.sidecar_column in inputs.sidecar_columns


def _run(
    con: duckdb.DuckDBPyConnection,
    inputs: MatchInputs,
    kinds: set[str],
    sql: str,
    near: pa.Table | None = None,
    image: pa.Table | None = None,
) -> pa.Table:
    """Run a removals query, with the shard's exact image hash matches (`image`, else found here) and PDQ near
    matches (`near`, else found here) registered first when the list has such entries."""
    registered = []
    try:
        if image_kinds(inputs, kinds):
            con.register(IMAGE_HITS, image if image is not None else image_hits(con, inputs, kinds))
            registered.append(IMAGE_HITS)
            con.register(IMAGE_ROWS, con.sql(image_rows_sql(inputs, IMAGE_HITS)).to_arrow_table())
            registered.append(IMAGE_ROWS)
        if near_kinds(inputs, kinds):
            if near is None:
                near = near_matching.shard_matches(con, inputs)[0]
            con.register(PDQ_MATCHES, near)
            registered.append(PDQ_MATCHES)
        table = con.sql(sql).to_arrow_table()
    finally:
        for name in registered:
            con.unregister(name)
    return table.rename_columns(schemas.REMOVALS.names).cast(schemas.REMOVALS)


def find_removals(con: duckdb.DuckDBPyConnection, inputs: MatchInputs, kinds: set[str], settings: Settings) -> pa.Table:
    """The removals table of one shard (see the module docstring)."""
    return _run(con, inputs, kinds, removals_sql(inputs, kinds, settings))


def rows_of(con: duckdb.DuckDBPyConnection, inputs: MatchInputs, numbers) -> pa.Table:
    """The `src` rows (row_number, row_key, url) of the shard with these row numbers, in memory only."""
    numbers = pa.array(numbers, pa.int64())
    if len(numbers) <= FEW_CANDIDATES:
        return con.sql(candidate_rows_sql(inputs, numbers.to_pylist())).to_arrow_table()
    con.register("relaion_candidates", pa.table({"row_number": numbers}))
    try:
        return con.sql(candidate_rows_sql(inputs, "relaion_candidates")).to_arrow_table()
    finally:
        con.unregister("relaion_candidates")


def with_shard_keys(con: duckdb.DuckDBPyConnection, inputs: MatchInputs, removals: pa.Table) -> pa.Table:
    """`removals` with each row's key as the shard has it at its row number: kept near matches and image hits
    are stored without keys (`row_keys`), so the key of every removal comes from the shard itself."""
    if not removals.num_rows:
        return removals
    numbers = removals.column("row_number").to_numpy().astype("int64")
    found = rows_of(con, inputs, sorted(set(numbers.tolist())))
    key_of = dict(zip(found.column("row_number").to_pylist(), found.column("row_key").to_pylist(), strict=True))
    keys = pa.array([key_of[int(n)] for n in numbers], pa.string())
    return removals.set_column(removals.schema.get_field_index("row_key"), "row_key", keys)


def match_candidates(
    con: duckdb.DuckDBPyConnection,
    inputs: MatchInputs,
    kinds: set[str],
    settings: Settings,
    candidates: pa.Array,
    near: pa.Table | None = None,
    image: pa.Table | None = None,
) -> pa.Table:
    """The removals table of one shard when only the rows `candidates` (input row numbers) can match a URL or
    domain entry: what the lookup-hash index says. Full hashes decide; a prefix collision is no removal.
    `near` and `image`: the shard's PDQ near matches and exact image hash matches when they were found
    beforehand (`near_matching.shard_matches`, `index.list_image_hits`)."""
    con.register("relaion_candidate_rows", rows_of(con, inputs, candidates))
    try:
        return _run(con, inputs, kinds, removals_sql(inputs, kinds, settings, "relaion_candidate_rows"), near, image)
    finally:
        con.unregister("relaion_candidate_rows")


def blank_sql(column: str) -> str:
    """SQL: true when the text `column` is empty or only spaces, as `trim(column) = ''` says (DuckDB's trim strips
    exactly the Unicode space separators, \\p{Zs}: tested on every code point) at half its cost (no trimmed
    copy of every value)."""
    return f"regexp_full_match({column}, '\\p{{Zs}}*')"


def shard_counts_sql(inputs: MatchInputs, more: dict[str, str] | None = None) -> str:
    """One pass over the shard: rows, rows without a URL or caption (null or blank), rows whose URL has another
    scheme than http(s), and rows whose row key repeats another row's (rows minus distinct keys, as the input
    check counts); then the aggregates `more` (name: SQL) in that order. Reading every URL and caption here
    also makes DuckDB reject text that is not UTF-8 in every shard, not only where the keyword rule happens
    to read a caption."""
    roles = inputs.roles
    url = quote(roles.url)
    duplicates = f"count(*) - count(DISTINCT {quote(roles.key)})" if roles.key is not None else "0"
    caption = quote(roles.caption) if roles.caption else "NULL::VARCHAR"
    return f"""
    SELECT count(*) AS rows_in,
           count(*) FILTER (WHERE {url} IS NULL OR {blank_sql(url)}) AS without_url,
           count(*) FILTER (WHERE {caption} IS NULL OR {blank_sql(caption)}) AS without_caption,
           count(*) FILTER (WHERE regexp_matches({url}, {sql_string(OTHER_SCHEME)})
                            AND NOT regexp_matches({url}, {sql_string(HTTP_SCHEME)}, 'i')) AS other_scheme,
           {duplicates} AS duplicate_row_keys{"".join(f", {sql} AS more_{n}" for n, sql in (more or {}).items())}
    FROM read_parquet({storage.duckdb_path(inputs.shard_path)})"""


def duplicate_key_sql(inputs: MatchInputs) -> str:
    """The smallest row key that occurs on more than one row: an example for the warning."""
    key = f"CAST({quote(inputs.roles.key)} AS VARCHAR)"
    return (
        f"SELECT min(k) FROM (SELECT {key} AS k FROM read_parquet({storage.duckdb_path(inputs.shard_path)}) "
        f"WHERE {key} IS NOT NULL GROUP BY k HAVING count(*) > 1)"
    )


def integer_key(path: str, roles: schemas.Roles) -> bool:
    """Whether the row key column of the parquet file `path` (a shard or its variant) holds signed integers of
    up to 64 bits (row keys are their text)."""
    if roles.key is None:
        return False
    return pa.types.is_signed_integer(shards.open_parquet(path).schema_arrow.field(roles.key).type)


def _key_number_sql(text: str) -> tuple[str, str]:
    """SQL: the integer that `text` reads as, and whether it is exactly that integer's text (as `key_sql` makes
    a row key's): '7' is 7's, but '07', '+7', ' 7', '7.0' and a number beyond 64 bits are no integer key's
    text. Test the number first: the second is for the few rows that pass."""
    number = f"TRY_CAST({text} AS BIGINT)"
    return number, f"CAST({number} AS VARCHAR) = {text}"


def key_in_sql(roles: schemas.Roles, integer: bool, texts: str) -> str:
    """SQL: true for a row whose row key's text is one of the values of `texts` (a query of one VARCHAR
    column). With an `integer` key column (`integer_key`), the few texts are turned into numbers instead of
    every row's key into text (18M keys: 0.5 s -> 0.1 s)."""
    if integer:
        number, exact = _key_number_sql("t")
        return f"{quote(roles.key)} IN (SELECT {number} FROM ({texts}) AS texts(t) WHERE {exact})"
    return f"CAST({quote(roles.key)} AS VARCHAR) IN ({texts})"


def sidecar_counts_sql(inputs: MatchInputs) -> str:
    """Rows of the shard's sidecar, how many of their keys are not a row key of the shard, how many of the
    shard's PDQ hashes are of too low a quality to be matched, are not 64 hex digits, or have a quality
    outside 0-100. One pass: each sidecar key is marked by one
    lookup in the shard's row keys (a single hash table, which spills beyond the memory limit)."""
    has_quality = {PDQ.sidecar_column, "pdq_quality"} <= set(inputs.sidecar_columns)
    low = f"pdq IS NOT NULL AND {pdq.low_quality_sql()}" if has_quality else "false"
    odd_quality = f"pdq IS NOT NULL AND {pdq.out_of_range_sql()}" if has_quality else "false"
    malformed = (
        "pdq IS NOT NULL AND NOT regexp_full_match(CAST(pdq AS VARCHAR), '[0-9a-fA-F]{64}')"
        if PDQ.sidecar_column in inputs.sidecar_columns
        else "false"
    )
    key, in_shard = inputs.roles.key_sql(inputs.shard_name), "CAST(key AS VARCHAR) IN (SELECT row_key FROM src)"
    if integer_key(inputs.shard_path, inputs.roles):  # numbers hash faster than text (18M keys: 7.2 s -> 6.4 s)
        key, (number, exact) = f"CAST({quote(inputs.roles.key)} AS BIGINT)", _key_number_sql("CAST(key AS VARCHAR)")
        in_shard = f"{number} IN (SELECT row_key FROM src) AND {exact}"
    return f"""
    WITH src AS (
        SELECT {key} AS row_key FROM read_parquet({storage.duckdb_path(inputs.shard_path)}, file_row_number = true)
    ),
    marked AS (
        SELECT coalesce({in_shard}, false) AS in_shard, {low} AS low_quality, {malformed} AS malformed,
               {odd_quality} AS odd_quality
        FROM read_parquet({storage.duckdb_path(inputs.sidecar_path)})
    )
    SELECT count(*), count(*) FILTER (WHERE NOT in_shard), count(*) FILTER (WHERE in_shard AND low_quality),
           count(*) FILTER (WHERE in_shard AND malformed), count(*) FILTER (WHERE in_shard AND odd_quality)
    FROM marked"""
