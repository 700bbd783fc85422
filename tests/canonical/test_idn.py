"""Non-ASCII (IDN) hosts: matched in their IDNA form (UTS #46, as browsers and Safe Browsing clients hash them)
and in the percent-encoded UTF-8 form, by the reference, the compiled index build and the SQL path alike, and
through `relaion run` and `relaion verify` end to end."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import written

from assets.runner import run_all
from relaion_pipeline import cli
from relaion_pipeline.canonical import canonical_kernel, url_sql, urls
from relaion_pipeline.core import schemas
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.match import index, matching
from relaion_pipeline.stages import variants

# (URL, the IDNA form of its canonical host; None: the host has one form, its percent-encoded one)
UNICODE_HOSTS = [
    ("http://bücher.example/idn.jpg", "xn--bcher-kva.example"),
    ("HTTP://BÜCHER.Example./a/b.jpg?x=1", "xn--bcher-kva.example"),  # mixed case, a trailing dot
    ("http://a.b.c.d.münchen.example/x/y/z.jpg", "a.b.c.d.xn--mnchen-3ya.example"),  # subdomains
    ("http://user@Bücher.example:8080/p", "xn--bcher-kva.example"),  # user info and a port
    ("http://b%C3%BCcher.example/escaped", "xn--bcher-kva.example"),  # UTF-8 written escaped
    ("http://b%25C3%25BCcher.example/twice", "xn--bcher-kva.example"),  # escaped twice
    ("http://straße.example/", "xn--strae-oqa.example"),  # ß is kept (UTS #46 non-transitional), not 'ss'
    ("http://ΣΟΦΙΑ.gr/", "xn--mxaprpq.gr"),  # case-folded Greek
    ("http://ｅｘａｍｐｌｅ．ｃｏｍ/x", "example.com"),  # fullwidth letters and full stop map to ASCII
    ("http://ＢÜＣＨＥＲ.example/", "xn--bcher-kva.example"),
    ("http://ko\u0308ln.example/", "xn--kln-sna.example"),  # decomposed: NFC first
    ("http://bücher.example\u3002/", "xn--bcher-kva.example"),  # an ideographic full stop, trailing
    ("http://日本。example/", "xn--wgv71a.example"),  # ... and between labels
    ("http://☃.net/", "xn--n3h.net"),  # a symbol browsers accept though IDNA2008 does not
    ("http://１２７．０．０．１/x", "127.0.0.1"),  # fullwidth digits: an IPv4 address
    ("http://x\ufffd.köln.example/", "x%EF%BF%BD.xn--kln-sna.example"),  # a disallowed label stays escaped
    ("http://\ufffd.example/invalid", None),  # IDNA-invalid: the percent-encoded form only
    ("http://%FC.example/latin-1", None),  # not UTF-8: the percent-encoded form only
    ("http://xn--bcher-kva.example/", None),  # punycode already: ASCII, one form
    ("http://example.com/bücher", None),  # non-ASCII in the path only
]


def test_idna_forms_of_unicode_hosts():
    for url, expected in UNICODE_HOSTS:
        host = urls.parse(url).host
        assert urls.idna_host(host) == expected, url
        assert urls.host_forms(host) == [host] if expected is None else [host, expected], url


def test_lookup_expressions_hold_both_forms():
    expressions = urls.lookup_expressions("http://Bücher.example/d/idn.jpg")
    assert expressions == [
        "b%C3%BCcher.example/d/idn.jpg",
        "b%C3%BCcher.example/",
        "b%C3%BCcher.example/d/",
        "xn--bcher-kva.example/d/idn.jpg",
        "xn--bcher-kva.example/",
        "xn--bcher-kva.example/d/",
    ]
    assert ("domain", "xn--mnchen-3ya.example") in index.reference("http://www.münchen.example/")[1]
    assert ("domain", "m%C3%BCnchen.example") in index.reference("http://www.münchen.example/")[1]


def _table_urls() -> list[str]:
    """The table's URLs, with some ASCII ones and random Unicode hosts beside them."""
    rng = random.Random(19)
    labels = ["bücher", "MÜNCHEN", "ｅｘａｍｐｌｅ", "straße", "日本", "☃", "\ufffd", "a", "www", "xn--9a", "%C3%A9"]
    values = [url for url, _ in UNICODE_HOSTS] + ["http://a.b/c", "http://1.2.3.4/", "http://[::1]/x"]
    for _ in range(300):
        host = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 6))) + rng.choice(["", ".", "。", ".com"])
        values.append(f"http://{host}/" + "/".join(rng.choice(["x", "ü", "y.jpg"]) for _ in range(rng.randint(0, 5))))
    return values


def test_sql_expressions_agree_with_reference_on_unicode_hosts():
    con = matching.connect()
    values = _table_urls()
    sql = url_sql.lookup_expressions_sql(con, values)
    for i, url in enumerate(values):
        assert sql[i] == set(urls.scoped_expressions(url)), url


def test_compiled_canonicalization_leaves_non_ascii_hosts_to_duckdb():
    values = [url for url, _ in UNICODE_HOSTS]
    for (url, form), got in zip(UNICODE_HOSTS, canonical_kernel.parts_of(values), strict=True):
        non_ascii = urls._NON_ASCII_ESCAPE.search(urls.parse(url).host)
        assert (got is None) == bool(non_ascii or form == "127.0.0.1"), url


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "sql"])
def test_index_entries_agree_with_reference_on_unicode_hosts(tmp_path, compiled):
    """The index of the table's URLs, built by the compiled kernels or by SQL, holds for every row exactly the
    entries the reference derives (both host forms, domain suffixes of both)."""
    con = matching.connect()
    values = _table_urls()
    shard = tmp_path / "idn.parquet"
    pq.write_table(pa.table({"url": pa.array(values, pa.string()), "caption": [""] * len(values)}), shard)
    inputs = matching.MatchInputs("idn", str(shard), schemas.detect(pq.read_schema(shard), str(shard)), "", None)
    meta = index.build(con, inputs, str(tmp_path / "work"), {"bytes": 0}, counts={}, compiled=compiled)
    assert meta["built_by"] == ("compiled" if compiled else "sql")
    entries = index.entries_of(con, index.paths(str(tmp_path / "work"), "idn")[0], np.arange(len(values)))
    differ = [values[row] for row in range(len(values)) if entries[row] != index.reference_entries(values[row])]
    assert differ == []
    punycode = hashlib.sha256(b"xn--bcher-kva.example/idn.jpg").digest()
    assert (index.URL, int.from_bytes(punycode[:8], "big")) in {(s, sha) for s, sha, _ in entries[0]}


# --------------------------------------------------------------------------------------------------------------
# What the operator did: lists holding the punycode sha256, a punycode domain and a Unicode domain.
# --------------------------------------------------------------------------------------------------------------

LISTED = {  # row URL -> why it must go
    "http://bücher.example/idn.jpg": "url_sha256 of xn--bcher-kva.example/idn.jpg",
    "HTTP://BÜCHER.example./idn.jpg": "the same, mixed case and a trailing dot",
    "http://café.example/p.jpg": "url_sha256 of the percent-encoded form caf%C3%A9.example/p.jpg",
    "http://x\ufffd.example/bad.jpg": "IDNA-invalid host: url_sha256 of its percent-encoded form",
    "http://münchen.example/a.jpg": "domain xn--mnchen-3ya.example",
    "http://img.MÜNCHEN.example/b.jpg": "domain xn--mnchen-3ya.example, a subdomain",
    "http://xn--mnchen-3ya.example/c.jpg": "domain xn--mnchen-3ya.example, written in punycode",
    "http://köln.example/d.jpg": "domain köln.example (written in Unicode)",
    "http://cdn.xn--kln-sna.example/e.jpg": "domain köln.example, a punycode host",
    "http://ｋöｌｎ.example/f.jpg": "domain köln.example, fullwidth letters",
}
KEPT = [
    "http://buecher.example/idn.jpg",
    "http://bücher.example/other.jpg",
    "http://münchen.example.org/a.jpg",  # not under münchen.example
    "http://koeln.example/d.jpg",
    "http://cafe.example/p.jpg",
    "http://example.com/köln.example/d.jpg",
]


def _layout(root: Path) -> tuple[Path, set[str], set[str]]:
    """A shard of a few hundred rows (the IDN rows among ASCII ones) and partner lists; the listed and kept keys."""
    rng = random.Random(7)
    rows = [(url, "listed") for url in LISTED] + [(url, "kept") for url in KEPT]
    rows += [(f"http://site{rng.randrange(10**6)}.example/{i}.jpg", "kept") for i in range(300)]
    rng.shuffle(rows)
    keys = [f"idn-{i}" for i in range(len(rows))]
    shards = root / "shards"
    shards.mkdir(parents=True)
    table = pa.table(
        {
            "key": keys,
            "url": [url for url, _ in rows],
            "caption": [f"a picture {i}" for i in range(len(rows))],
            "punsafe": pa.array([0.1] * len(rows), pa.float32()),
        }
    )
    pq.write_table(table, shards / "idn.parquet")
    partner = root / "lists" / "partner"
    partner.mkdir(parents=True)
    digests = [b"xn--bcher-kva.example/idn.jpg", b"caf%C3%A9.example/p.jpg", b"x%EF%BF%BD.example/bad.jpg"]
    (partner / "url_sha256.txt").write_text("".join(hashlib.sha256(d).hexdigest() + "\n" for d in digests))
    (root / "lists" / "optout").mkdir()
    (root / "lists" / "optout" / "domains.csv").write_text(
        "kind,value\ndomain,xn--mnchen-3ya.example\ndomain,köln.example\n", encoding="utf-8"
    )
    listed = {k for k, (_, why) in zip(keys, rows, strict=True) if why == "listed"}
    return root, listed, set(keys) - listed


def test_run_removes_idn_rows_listed_in_either_form(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    root, listed, kept = _layout(tmp_path)
    flags = ["--shards", root / "shards", "--blocklists", root / "lists", "--sidecars", root / "sidecars"]
    flags += ["--work", root / "work", "--release", root / "releases"]
    assert cli.main(["run", *map(str, flags)]) == 0, capsys.readouterr()
    release = root / "releases" / (root / "releases" / "latest").read_text().strip()
    published = sorted(release.rglob("*.parquet"))
    assert {p.relative_to(release).parts[0] for p in published} >= {"research", "research-safe"}
    for path in published:
        if path.name == "removal-list.parquet":
            continue
        keys = set(pq.read_table(path).column("key").to_pylist())
        assert keys & listed == set(), f"{path}: listed IDN rows published"
        assert keys == kept, path
    removals = pq.read_table(root / "work" / "removals" / "idn.parquet")
    assert set(removals.column("row_key").to_pylist()) == set(written(root / "shards" / "idn.parquet", listed))
    out = capsys.readouterr()
    for url in LISTED:
        assert url not in out.out + out.err and urls.parse(url).host not in out.out + out.err

    # `verify --blocklists` matches the same way: the published release holds no row of these lists, and a row
    # that a new punycode entry names is found in it.
    assert cli.main(["verify", str(root / "releases"), "--blocklists", str(root / "lists")]) == 0
    (root / "lists" / "late").mkdir()
    (root / "lists" / "late" / "domain.txt").write_text("ＢÜＣＨＥＲ.example\n", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["verify", str(root / "releases"), "--blocklists", str(root / "lists")]) == 1
    assert "research/idn.parquet: 1 rows match the lists ({'domain': 1})" in capsys.readouterr().out


def test_research_check_finds_published_idn_rows_by_either_form(tmp_path, monkeypatch):
    """A filter bug that publishes every row: the research check re-derives the IDN rows' matches with the
    reference (both host forms) and holds the shard back, naming row keys only."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    root, listed, _ = _layout(tmp_path)
    settings = Settings(
        shards=str(root / "shards"),
        blocklists=str(root / "lists"),
        sidecars=str(root / "sidecars"),
        work=str(root / "work"),
        release=str(root / "releases"),
    )
    original = variants.write_research

    def keeps_every_row(shard_path, removed, destination, safe=None):
        return original(shard_path, np.array([], dtype=np.int64), destination, safe)

    monkeypatch.setattr(variants, "write_research", keeps_every_row)
    summary = run_all(settings, progress=lambda line: None)

    assert not summary.ok
    assert "research_has_no_blocklist_match" in summary.shards[0].failed_checks
    record = (root / "work" / "validation" / "research_has_no_blocklist_match" / "idn.json").read_text()
    (failure,) = json.loads(record)["failures"]
    assert failure["observed"] == 2 * len(listed), "each found by re-matching its URL and by its removed row key"
    assert set(failure["sample_row_keys"]) <= set(written(root / "shards" / "idn.parquet", listed))
    assert json.loads(record)["statistics"]["rows_matched_by_reference"] == len(listed)
    assert not any(url in record or urls.parse(url).host in record for url in LISTED)


def test_shard_matched_before_idna_host_forms_is_matched_again(tmp_path, monkeypatch, capsys):
    """Outputs whose removals were found without the IDNA host forms (an older version's: no `host_forms` in
    their rules) are not up to date: `relaion run` matches the shard again instead of skipping it."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    root, listed, _ = _layout(tmp_path)
    flags = ["--shards", root / "shards", "--blocklists", root / "lists", "--sidecars", root / "sidecars"]
    flags += ["--work", root / "work", "--release", root / "releases"]
    assert cli.main(["run", *map(str, flags)]) == 0
    assert cli.main(["run", *map(str, flags)]) == 0
    assert "idn: up to date for blocklist" in capsys.readouterr().out

    stats_path = root / "work" / "stats" / "removals" / "idn.json"
    stats = json.loads(stats_path.read_text())
    del stats["rules"]["host_forms"]
    stats_path.write_text(json.dumps(stats))
    assert cli.main(["run", *map(str, flags)]) == 0
    out = capsys.readouterr().out
    assert "idn: up to date" not in out
    assert json.loads(stats_path.read_text())["rules"]["host_forms"] == urls.HOST_FORMS
    removed = set(pq.read_table(root / "work" / "removals" / "idn.parquet").column("row_key").to_pylist())
    assert removed == set(written(root / "shards" / "idn.parquet", listed))
