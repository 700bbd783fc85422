"""Matching one shard against a list in DuckDB: every kind, scopes, keyword rule, and no URL in the output."""

import hashlib

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.core import schemas
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.match import matching


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


URLS = [
    "http://exact.example.com/a/b.jpg?x=1",  # 0: exact url (sha256)
    "http://Prefix.Example.com/dir/sub/c.jpg",  # 1: path prefix prefix.example.com/dir/ (sha256)
    "https://img.hosted.example.org/any/thing.png",  # 2: host entry hosted.example.org/ (suffix host)
    "http://md5.example.net/p%20q.jpg#frag",  # 3: exact url via md5, through the escape fallback
    "http://cdn.optout.example/i.jpg",  # 4: domain optout.example (subdomain)
    "http://notoptout.example/i.jpg",  # 5: NOT the domain (label boundary)
    "http://clean.example.com/a/b.jpg",  # 6: clean
    "http://clean.example.com/kw.jpg",  # 7: keyword + punsafe 0.99 -> removed
    "http://clean.example.com/kw2.jpg",  # 8: keyword + punsafe 0.5 -> kept
    "http://clean.example.com/img.jpg",  # 9: image md5 via sidecar
    None,  # 10: null URL is skipped, not an error
    "http://clean.example.com/forbiddentermx.jpg",  # 11: keyword only as part of a word -> kept
]
CAPTIONS = ["a"] * 7 + ["photo with FORBIDDENTERM inside", "forbiddenterm", "b", "c", "forbiddentermx caption"]
PUNSAFE = [0.1] * 7 + [0.99, 0.5, 0.1, 0.1, 0.99]


@pytest.fixture
def setup(tmp_path):
    shard = tmp_path / "shard.parquet"
    pq.write_table(
        pa.table(
            {
                "key": [f"k{i:02d}" for i in range(len(URLS))],
                "url": URLS,
                "caption": CAPTIONS,
                "punsafe": pa.array(PUNSAFE, pa.float32()),
            }
        ),
        shard,
    )
    sidecar = tmp_path / "sidecar.parquet"
    pq.write_table(pa.table({"key": ["k09", "k06"], "md5": [md5("image-9").upper(), md5("image-6")]}), sidecar)
    lists = tmp_path / "lists"
    (lists / "iwf").mkdir(parents=True)
    (lists / "iwf" / "l.csv").write_text(
        "kind,value,category\n"
        f"url_sha256,{sha('exact.example.com/a/b.jpg?x=1')},csam\n"
        f"url_sha256,{sha('prefix.example.com/dir/')},csam\n"
        f"url_sha256,{sha('hosted.example.org/')},csam\n"
        f"url_md5,{md5('md5.example.net/p%20q.jpg')},csam\n"
        f"image_md5,{md5('image-9')},csam\n"
        f"url_sha256,{sha('nothing.example/')},csam\n"
    )
    (lists / "optout").mkdir()
    (lists / "optout" / "domains.csv").write_text("kind,value,category\ndomain,optout.example,opt-out\n")
    merged = blocklists.load(str(lists))
    path = blocklists.write(merged, str(tmp_path / "work"))
    roles = schemas.detect(pq.read_schema(shard), str(shard))
    inputs = matching.MatchInputs("shard", str(shard), roles, path, str(sidecar), ("md5",))
    kinds = set(merged.table.column("kind").to_pylist())
    return inputs, kinds


def test_every_kind_matches_exactly_the_planted_rows(setup):
    inputs, kinds = setup
    con = matching.connect()
    removals = matching.find_removals(con, inputs, kinds, Settings()).to_pylist()
    got = {(r["row_key"], r["kind"], r["source"], r["category"], r["match"]) for r in removals}
    assert got == {
        ("k00", "url_sha256", "iwf", "csam", "url"),
        ("k01", "url_sha256", "iwf", "csam", "path"),
        ("k02", "url_sha256", "iwf", "csam", "host"),
        ("k03", "url_md5", "iwf", "csam", "url"),
        ("k04", "domain", "optout", "opt-out", "host"),
        ("k07", "keyword", "keyword-list", "unsafe-caption", "caption"),
        ("k09", "image_md5", "iwf", "csam", "image"),
    }
    by_key = {r["row_key"]: r for r in removals}
    assert by_key["k00"]["hash"] == sha("exact.example.com/a/b.jpg?x=1")
    assert by_key["k04"]["hash"] == "optout.example"
    assert by_key["k07"]["hash"] is None
    assert [r["row_number"] for r in removals] == sorted(r["row_number"] for r in removals)


def test_removals_never_hold_a_url_expression_or_caption(setup):
    inputs, kinds = setup
    table = matching.find_removals(matching.connect(), inputs, kinds, Settings())
    assert table.schema == schemas.REMOVALS
    text = str(table.to_pylist())
    for needle in ["exact.example.com", "prefix.example.com", "hosted.example.org", "md5.example.net", "FORBIDDENTERM"]:
        assert needle not in text


def test_keyword_rule_uses_research_threshold(setup):
    inputs, kinds = setup
    lenient = Settings(research_threshold=0.4)
    removals = matching.find_removals(matching.connect(), inputs, kinds, lenient).to_pylist()
    keyword_rows = {r["row_key"] for r in removals if r["kind"] == "keyword"}
    assert keyword_rows == {"k07", "k08"}


def test_nsfw_tag_stands_in_for_a_missing_score(tmp_path):
    shard = tmp_path / "plain.parquet"
    pq.write_table(
        pa.table(
            {
                "SAMPLE_ID": pa.array([1, 2, 3], pa.int64()),
                "URL": ["http://a.example/1", "http://a.example/2", "http://a.example/3"],
                "TEXT": ["forbiddenterm", "forbiddenterm", "nothing"],
                "NSFW": ["NSFW", "UNSURE", "NSFW"],
            }
        ),
        shard,
    )
    roles = schemas.detect(pq.read_schema(shard), str(shard))
    assert (roles.family, roles.key, roles.punsafe, roles.nsfw) == ("laion-plain", "SAMPLE_ID", None, "NSFW")
    (tmp_path / "lists" / "s").mkdir(parents=True)
    (tmp_path / "lists" / "s" / "domain.txt").write_text("unrelated.example\n")
    path = blocklists.write(blocklists.load(str(tmp_path / "lists")), str(tmp_path / "work"))
    inputs = matching.MatchInputs("plain", str(shard), roles, path, None)
    removals = matching.find_removals(matching.connect(), inputs, {"domain"}, Settings()).to_pylist()
    assert [(r["row_key"], r["kind"]) for r in removals] == [("1", "keyword")]


def test_minimal_shard_rows_are_keyed_by_shard_and_row_number(tmp_path):
    shard = tmp_path / "m.parquet"
    pq.write_table(pa.table({"URL": ["http://x.example/a", "http://y.example/b"], "TEXT": ["a", "b"]}), shard)
    (tmp_path / "lists" / "s").mkdir(parents=True)
    (tmp_path / "lists" / "s" / "url_sha256.txt").write_text(sha("y.example/") + "\n")
    path = blocklists.write(blocklists.load(str(tmp_path / "lists")), str(tmp_path / "work"))
    roles = schemas.detect(pq.read_schema(shard), str(shard))
    inputs = matching.MatchInputs("sub/m", str(shard), roles, path, None)
    removals = matching.find_removals(matching.connect(), inputs, {"url_sha256"}, Settings()).to_pylist()
    assert [(r["row_number"], r["row_key"], r["match"]) for r in removals] == [(1, "sub/m:1", "host")]


def test_unknown_schema_names_the_file_and_columns():
    schema = pa.schema([("link", pa.string()), ("alt", pa.string())])
    with pytest.raises(schemas.ShardSchemaError, match=r"x.parquet: no known schema family.*found columns: link, alt"):
        schemas.detect(schema, "x.parquet")


def test_wrong_url_type_is_a_clear_error():
    schema = pa.schema([("URL", pa.int64()), ("TEXT", pa.string())])
    roles = schemas.detect(schema, "y.parquet")
    with pytest.raises(
        schemas.ShardSchemaError, match=r"y.parquet: column 'URL' \(url\) must hold strings, found int64"
    ):
        schemas.check_types(schema, roles, "y.parquet")


@pytest.mark.parametrize(
    ("threads", "configured", "expected_mib"),
    [(2, "", 512), (8, "", 1024), (16, "", 2048), (8, "300MB", 300)],
)
def test_duckdb_gets_memory_per_thread_unless_a_limit_is_set(threads, configured, expected_mib):
    """DuckDB's wide scans and joins need ~128MB a thread: a fixed default would fail on many-core machines
    (512MB with 8 threads runs out on an 18M-row shard), so the default grows with the threads."""
    con = matching.connect(Settings(duckdb_threads=threads, duckdb_memory_limit=configured))
    try:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        threads_set = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    finally:
        con.close()
    reference = duckdb.connect()
    reference.execute(f"SET memory_limit = '{expected_mib}MB'")
    assert int(threads_set) == threads
    assert limit == reference.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    reference.close()


def test_threads_follow_the_cpus_the_process_may_use(tmp_path):
    """A pod's CPU limit is a cgroup v2 quota (`cpu.max`); DuckDB alone would start a thread per CPU of the
    node and the default memory limit would follow them."""
    import os

    from relaion_pipeline.core.settings import available_cpus

    mine = len(os.sched_getaffinity(0))
    assert available_cpus(str(tmp_path)) == mine, "no cgroup file: the CPU affinity"
    for quota, expected in [("max 100000", mine), ("150000 100000", min(mine, 2)), ("50000 100000", 1)]:
        (tmp_path / "cpu.max").write_text(quota + "\n")
        assert available_cpus(str(tmp_path)) == expected, quota
    (tmp_path / "cpu.max").write_text("not a quota\n")
    assert available_cpus(str(tmp_path)) == mine
    con = matching.connect(Settings())
    try:
        threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    finally:
        con.close()
    assert threads == Settings().threads() == available_cpus()


def test_default_memory_limit_stays_within_half_a_pods_memory_limit(tmp_path):
    """On a node with many CPUs and no CPU quota, 128MB a thread could exceed a pod's memory: the default
    never takes more than half of a cgroup v2 `memory.max`."""
    from relaion_pipeline.core.settings import memory_cap

    settings = Settings()
    assert memory_cap(str(tmp_path)) is None and settings.memory_limit(64, str(tmp_path)) == "8192MB"
    (tmp_path / "memory.max").write_text("max\n")
    assert settings.memory_limit(64, str(tmp_path)) == "8192MB"
    (tmp_path / "memory.max").write_text(f"{4 * 10**9}\n")  # a 4 GB pod
    assert memory_cap(str(tmp_path)) == 2000
    assert settings.memory_limit(64, str(tmp_path)) == "2000MB" and settings.memory_limit(2, str(tmp_path)) == "512MB"
    assert Settings(duckdb_memory_limit="3GB").memory_limit(64, str(tmp_path)) == "3GB", "a setting is kept"


def test_sidecar_hashes_of_any_case_equal_list_values_as_lowered_they_would():
    """Image hashes are compared lower-cased, but lower() runs only where an upper-case hex digit is: for any
    value the result equals a (lower-case hex) list value exactly when lower() of it would."""
    entry = md5("image")
    values = [entry, entry.upper(), entry[:10].upper() + entry[10:], entry[:-1] + "G", entry[:-1] + "g"]
    values += ["Ä" + entry[1:], entry[:5] + "Z" + entry[6:].upper(), "", None, entry + " "]
    con = duckdb.connect()
    con.register("v", pa.table({"value": values}))
    got = con.execute(
        f"SELECT value, {matching.lower_hex_sql('value')} = ?, lower(value) = ? FROM v", [entry, entry]
    ).fetchall()
    assert [(v, fast) for v, fast, _ in got] == [(v, slow) for v, _, slow in got]
    assert [fast for _, fast, _ in got][:3] == [True, True, True]


def test_blank_text_is_what_trim_leaves_empty_for_every_code_point():
    """The shard's counts find blank URLs and captions by a pattern, not by trimming every value: the same
    verdict as `trim(x) = ''` for every single code point and for mixes of spaces, other whitespace,
    letters, combining marks and zero-width characters."""
    import itertools

    con = duckdb.connect()
    single = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE trim(s) = '')
        FROM (SELECT chr(i::INTEGER) AS s FROM range(1, 1114112) t(i) WHERE i < 55296 OR i > 57343)
        WHERE (trim(s) = '') <> {matching.blank_sql("s")}"""
    ).fetchall()
    alphabet = [" ", "\u00a0", "\u3000", "\u2009", "a", "\t", "\u0301", "\u200b", "\u2028", "\ufeff"]
    mixes = ["".join(p) for n in range(5) for p in itertools.product(alphabet, repeat=n)]
    con.register("mixes", pa.table({"s": mixes}))
    differ = con.execute(f"SELECT s FROM mixes WHERE (trim(s) = '') <> {matching.blank_sql('s')}").fetchall()
    blank = con.execute(f"SELECT count(*) FROM mixes WHERE {matching.blank_sql('s')}").fetchall()[0][0]
    assert single == [(0, 0)] and differ == [] and blank == 1 + 4 + 16 + 64 + 256, "the 4 spaces, up to 4 long"


def test_local_parquet_files_are_read_without_prefetching_and_remote_ones_with_it(tmp_path):
    """Prefetching held whole column chunks of rows that a filter skips, in memory that grew with the shard;
    for object stores it merges many small reads into a few requests."""

    def prefetching(settings: Settings) -> bool:
        con = matching.connect(settings)
        try:
            return not con.sql("SELECT current_setting('disable_parquet_prefetching')").fetchall()[0][0]
        finally:
            con.close()

    assert not prefetching(Settings.layout(tmp_path / "in", tmp_path / "out"))
    assert prefetching(Settings.layout("s3://inputs", tmp_path / "out"))
    assert prefetching(Settings.layout(tmp_path / "in", "s3://outputs"))
