"""The SQL tier of URL canonicalization: DuckDB's canonical parts of URLs and their lookup expressions.

The compiled kernel (`canonical_kernel`, `lookup_hashes`) canonicalizes what it can and hands this tier the rest
(possible IP hosts, IPv6, non-ASCII hosts, URLs without a canonical form); `index.build_sql` builds a whole
index with it when OpenSSL is missing, and the tests hold it to the Python reference (`urls`).

Its contract with the queries that use it (`canonical_parts_sql(source, url)`): a relation `source` with a
column `url` (and any others, passed through) becomes rows with those columns and `c`, a struct of the
canonical `host`, `path`, `query` and, for a non-ASCII host, `idna_host` (null when the URL has no canonical
form); `EXPRESSIONS_SQL` then reads a relation named `canonical` of such rows (`row_number`, `row_key`, `c`)
and yields one row per lookup expression, with its scope. `_canonical_udf` is registered on every connection
(`matching.connect`) as `relaion_canonical`, the reference for the rows the SQL rules leave.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from relaion_pipeline.canonical import urls
from relaion_pipeline.core.schemas import sql_string

# A URL DuckDB can canonicalize by itself: lower-case http(s) scheme, a host of letters, digits, '-' and
# dots, then printable ASCII without '%' (nothing to unescape) up to an optional fragment.
FAST_URL = r"""(?s)^https?://([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)((?:/[!-"$&-~]*)?)(?:#.*)?$"""
DOT_SEGMENT = r"/\.\.?(?:/|$)"
SAFE_CHARS = r"""[!-"$&-~]"""  # printable ASCII but '#' and '%': left as they are by canonical escaping
POSSIBLE_IP = r"(?:0[xX][0-9A-Fa-f]+|[0-9.])+"
DOTTED_QUAD = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"

CANONICAL_TYPE = "STRUCT(host VARCHAR, path VARCHAR, query VARCHAR, idna_host VARCHAR)"
_CANONICAL_ARROW = pa.struct([(name, pa.string()) for name in ("host", "path", "query", "idna_host")])


def _canonical_udf(url_array: pa.Array) -> pa.Array:
    """The reference's canonical parts of each URL, and the IDNA form of its host when it has one (null for an
    ASCII host); a null struct for a URL without a canonical form."""
    hosts, paths, queries, idna_hosts, valid = [], [], [], [], []
    for url in url_array.to_pylist():
        try:
            c = urls.parse(url)
        except ValueError:
            c = None
        valid.append(c is not None)
        hosts.append(c and c.host)
        paths.append(c and c.path)
        queries.append(c and c.query)
        idna_hosts.append(c and urls.idna_host(c.host))
    mask = pa.array([not v for v in valid], pa.bool_())
    columns = [pa.array(values, pa.string()) for values in (hosts, paths, queries, idna_hosts)]
    return pa.StructArray.from_arrays(columns, fields=list(_CANONICAL_ARROW), mask=mask)


def _escape_sql(value: str) -> str:
    """SQL percent-escaping bytes <= 0x20, >= 0x7f, '#' and '%' of a string, as `urls._escape` does."""
    return (
        f"CASE WHEN regexp_full_match({value}, {sql_string(SAFE_CHARS + '*')}) THEN {value} "
        f"ELSE array_to_string(list_transform(string_split({value}, ''), lambda ch: "
        f"CASE WHEN regexp_full_match(ch, {sql_string(SAFE_CHARS)}) THEN ch ELSE url_encode(ch) END), '') END"
    )


def canonical_parts_sql(source: str, url: str = "url") -> str:
    """SQL selecting `row_number, row_key, host, path, query` for every row of `source` with a usable URL, once
    per host form (`urls.host_forms`: a non-ASCII host's IDNA form is a second row).

    Three tiers, each giving exactly the reference result: `fast` (regular URLs, a few string functions),
    `general` (percent escapes, non-ASCII paths, ports, user info, upper-case schemes, repeated slashes and
    dots: the reference rules written in SQL) and the reference itself as a UDF for what is left (IP hosts in
    any encoding, dot segments, control characters, escapes that do not settle in three rounds, non-ASCII
    hosts, which the first two never take: their IDNA form is the reference's too).
    """
    fast = sql_string(FAST_URL)
    undecoded = sql_string(r"%[0-9A-Fa-f]{2}")
    return f"""
    split AS (
        SELECT row_number, row_key, {url} AS url,
               regexp_extract({url}, {fast}, 1) AS raw_host,
               regexp_extract({url}, {fast}, 2) AS rest
        FROM {source}
        WHERE {url} IS NOT NULL
    ),
    classified AS MATERIALIZED (
        SELECT *, split_part(rest, '?', 1) AS raw_path,
               regexp_full_match(url, {fast})
               AND NOT contains(split_part(rest, '?', 1), '//')
               AND NOT regexp_matches(split_part(rest, '?', 1), {sql_string(DOT_SEGMENT)})
               AND NOT regexp_full_match(raw_host, {sql_string(POSSIBLE_IP)}) AS fast
        FROM split
    ),
    unfragmented AS (
        SELECT row_number, row_key, url, split_part(url, '#', 1) AS u0 FROM classified WHERE NOT fast
    ),
    decoded1 AS (
        SELECT *, CASE WHEN contains(u0, '%') THEN try(url_decode(u0)) ELSE u0 END AS u1 FROM unfragmented
    ),
    decoded AS (
        SELECT *, CASE WHEN contains(u2, '%') THEN try(url_decode(u2)) ELSE u2 END AS d
        FROM (SELECT *, CASE WHEN contains(u1, '%') THEN try(url_decode(u1)) ELSE u1 END AS u2 FROM decoded1)
    ),
    parsed AS (
        SELECT *, split_part(after_scheme, '?', 1) AS before_query,
               CASE WHEN contains(after_scheme, '?') THEN substr(after_scheme, strpos(after_scheme, '?') + 1) END
                   AS g_query
        FROM (
            SELECT *, CASE WHEN scheme = '' THEN d ELSE substr(d, length(scheme) + 4) END AS after_scheme
            FROM (SELECT *, regexp_extract(d, '^([A-Za-z][A-Za-z0-9+.\-]*)://', 1) AS scheme FROM decoded)
        )
    ),
    hosted AS (
        SELECT *, trim(regexp_replace(regexp_replace(regexp_extract(authority, '([^@]*)$', 1), ':[0-9]*$', ''),
                                      '\.{{2,}}', '.', 'g'), '.') AS g_host,
               regexp_replace(substr(before_query, length(authority) + 1), '/+', '/', 'g') AS g_path
        FROM (SELECT *, split_part(before_query, '/', 1) AS authority FROM parsed)
    ),
    general AS MATERIALIZED (
        SELECT *, d IS NOT NULL
               AND NOT regexp_matches(u0, '[\x00-\x20\x7f]')
               AND NOT regexp_matches(d, '[\x00-\x1f\x7f]')
               AND NOT regexp_matches(d, {undecoded})
               AND regexp_full_match(g_host, '[!-~]+')
               AND NOT starts_with(g_host, '[')
               AND NOT regexp_full_match(g_host, {sql_string(POSSIBLE_IP)})
               AND NOT regexp_matches(g_path, {sql_string(DOT_SEGMENT)}) AS ok
        FROM hosted
    ),
    fallback AS MATERIALIZED (
        SELECT row_number, row_key, relaion_canonical(url) AS c FROM general WHERE NOT ok
    ),
    canonical AS MATERIALIZED (
        SELECT row_number, row_key, lower(raw_host) AS host,
               CASE WHEN raw_path = '' THEN '/' ELSE raw_path END AS path,
               CASE WHEN contains(rest, '?') THEN substr(rest, strpos(rest, '?') + 1) END AS query
        FROM classified WHERE fast
        UNION ALL
        SELECT row_number, row_key, {_escape_sql("lower(g_host)")},
               {_escape_sql("CASE WHEN g_path = '' THEN '/' ELSE g_path END")}, {_escape_sql("g_query")}
        FROM general WHERE ok
        UNION ALL
        SELECT row_number, row_key, c.host, c.path, c.query FROM fallback WHERE c IS NOT NULL
        UNION ALL
        SELECT row_number, row_key, c.idna_host, c.path, c.query FROM fallback WHERE c.idna_host IS NOT NULL
    )"""


EXPRESSIONS_SQL = f"""
    lists AS (
        SELECT row_number, row_key, path, query,
               CASE WHEN regexp_full_match(host, {sql_string(DOTTED_QUAD)}) OR starts_with(host, '[') THEN [host]
                    ELSE list_prepend(host, list_transform(
                        range(greatest(len(labels) - {urls.MAX_HOST_SUFFIX_COMPONENTS}, 1), len(labels) - 1),
                        lambda i: array_to_string(labels[i + 1:], '.')))
               END AS hosts,
               -- exact paths first (with query, without), then the distinct directory prefixes
               (CASE WHEN query IS NOT NULL THEN [path || '?' || query, path] ELSE [path] END)
               || list_filter(list_transform(range(0, least(len(dirs) - 1, {urls.MAX_PATH_PREFIXES - 1}) + 1),
                        lambda k: '/' || array_to_string(list_transform(dirs[1:k], lambda d: d || '/'), '')),
                      lambda prefix: prefix <> path) AS paths,
               1 + (query IS NOT NULL)::INTEGER AS exact_paths
        FROM (SELECT *, string_split(host, '.') AS labels, string_split(path[2:], '/') AS dirs FROM canonical)
    ),
    host_rows AS (
        SELECT row_number, row_key, paths, exact_paths,
               unnest(hosts) AS host_suffix, unnest(range(0, len(hosts))) AS host_index
        FROM lists
    ),
    expressions AS (
        SELECT row_number, row_key, host_suffix || path_prefix AS expression,
               CASE WHEN host_index = 0 AND path_index < exact_paths THEN 'url'
                    WHEN path_prefix = '/' THEN 'host' ELSE 'path' END AS scope
        FROM (SELECT row_number, row_key, exact_paths, host_suffix, host_index,
                     unnest(paths) AS path_prefix, unnest(range(0, len(paths))) AS path_index
              FROM host_rows)
    )"""


def lookup_expressions_sql(con: duckdb.DuckDBPyConnection, url_values: list[str]) -> dict[int, set[tuple]]:
    """Lookup expressions with scopes of `url_values` as DuckDB computes them (for tests and audits)."""
    table = pa.table({"row_number": pa.array(range(len(url_values)), pa.int64()), "url": url_values})
    con.register("relaion_urls", table)
    try:
        rows = con.sql(
            f"WITH src AS (SELECT row_number, CAST(row_number AS VARCHAR) AS row_key, url FROM relaion_urls),"
            f"{canonical_parts_sql('src')}, {EXPRESSIONS_SQL} SELECT row_number, expression, scope FROM expressions"
        ).fetchall()
    finally:
        con.unregister("relaion_urls")
    out: dict[int, set[tuple]] = {i: set() for i in range(len(url_values))}
    for row_number, expression, scope in rows:
        out[row_number].add((expression, scope))
    return out
