"""The list kinds are declared once (relaion_pipeline/lists/kinds.py): each kind's values are validated as declared,
its entries are matched and labelled as declared, and no other module spells a kind's name."""

import ast
import dataclasses
import hashlib
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.core import cache, schemas
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists, kinds
from relaion_pipeline.lists.blocklists import BlocklistError
from relaion_pipeline.lists.kinds import Kind, Match
from relaion_pipeline.match import index, matching, near_matching
from relaion_pipeline.stages import pipeline

ROOT = Path(__file__).resolve().parents[2]

# Values of the right form for each kind, as a partner might write them, and their normalized form.
VALID = {
    "url_sha256": (" " + "AB" * 32 + " ", "ab" * 32),
    "url_md5": ("0F" * 16, "0f" * 16),
    "image_md5": ("9" * 32, "9" * 32),
    "image_sha1": ("Cd" * 20, "cd" * 20),
    "image_sha256": ("e" * 64, "e" * 64),
    "pdq": ("F0" * 32, "f0" * 32),
    "domain": ("Köln.Example.", "xn--kln-sna.example"),
}


def test_the_registry_declares_every_kind_the_partner_lists_may_hold():
    assert kinds.NAMES == ("url_sha256", "url_md5", "image_md5", "image_sha1", "image_sha256", "pdq", "domain")
    assert blocklists.KINDS == kinds.NAMES  # the order the parser's messages list them in
    assert set(VALID) == set(kinds.NAMES)
    assert {k.name: k.hex_digits for k in kinds.ALL} == {
        "url_sha256": 64, "url_md5": 32, "image_md5": 32, "image_sha1": 40, "image_sha256": 64, "pdq": 64,
        "domain": None,
    }  # fmt: skip


@pytest.mark.parametrize("name", kinds.NAMES)
def test_each_kind_accepts_its_values_in_any_case_and_stores_them_normalized(tmp_path, name):
    raw, normalized = VALID[name]
    assert blocklists.normalize_value(name, raw, "f:1") == normalized
    assert re.fullmatch(kinds.by_name(name).pattern, normalized)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text(f"kind,value\n{name},{raw.strip()}\n", encoding="utf-8")
    merged = blocklists.load(str(tmp_path))
    assert merged.table.select(["kind", "value"]).to_pylist() == [{"kind": name, "value": normalized}]


@pytest.mark.parametrize("kind", [k for k in kinds.ALL if k.hex_digits])
def test_each_hex_kind_rejects_a_wrong_length_or_a_non_hex_digit_naming_file_and_line(tmp_path, kind):
    n, name = kind.hex_digits, kind.name
    cases = [
        ("a" * (n - 1), f"src/a.csv:3: {name} value has {n - 1} characters, expected {n} hex digits"),
        ("a" * (n + 2), f"src/a.csv:3: {name} value has {n + 2} characters, expected {n} hex digits"),
        ("g" + "a" * (n - 1), f"src/a.csv:3: {name} value is not hexadecimal (expected {n} hex digits 0-9a-f)"),
    ]
    for value, expected in cases:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / "a.csv").write_text(f"kind,value\n# first\n{name},{value}\n", encoding="utf-8")
        with pytest.raises(BlocklistError) as error:
            blocklists.load(str(tmp_path))
        assert str(error.value) == expected
        assert not re.fullmatch(kind.pattern, value)


def test_a_domain_must_be_a_plain_host_and_an_unknown_kind_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    for line, expected in (
        ("domain,http://x.example/", "src/a.csv:2: domain value is not a plain host name with at least two labels"),
        ("domain,com", "src/a.csv:2: domain value is not a plain host name with at least two labels"),
        (
            "url_sha1," + "a" * 40,
            "src/a.csv:2: unknown kind 'url_sha1': expected one of url_sha256, url_md5, image_md5, image_sha1,"
            " image_sha256, pdq, domain",
        ),
    ):
        (tmp_path / "src" / "a.csv").write_text(f"kind,value\n{line}\n", encoding="utf-8")
        with pytest.raises(BlocklistError) as error:
            blocklists.load(str(tmp_path))
        assert str(error.value).startswith(expected)
    (tmp_path / "src" / "a.csv").unlink()
    (tmp_path / "src" / "hashes.txt").write_text("a" * 32 + "\n", encoding="utf-8")
    with pytest.raises(
        BlocklistError, match="src/hashes.txt: file name must be <kind>.txt with kind one of url_sha256,"
    ):
        blocklists.load(str(tmp_path))


def test_every_kind_is_matched_in_exactly_one_way_and_the_groups_follow():
    by_match = {m: [k.name for k in kinds.ALL if k.match is m] for m in Match}
    assert by_match == {
        Match.URL_EXPRESSION: ["url_sha256", "url_md5"],
        Match.HOST_SUFFIX: ["domain"],
        Match.SIDECAR_EXACT: ["image_md5", "image_sha1", "image_sha256"],
        Match.SIDECAR_NEAR: ["pdq"],
    }
    assert kinds.URL_EXPRESSION == ("url_sha256", "url_md5")
    assert kinds.URL_DERIVED == ("url_sha256", "url_md5", "domain")
    assert kinds.SIDECAR_EXACT == ("image_md5", "image_sha1", "image_sha256")
    assert kinds.NEAR == ("pdq",)
    assert kinds.IMAGE == ("image_md5", "image_sha1", "image_sha256", "pdq")
    assert sorted(kinds.URL_DERIVED + kinds.IMAGE) == sorted(kinds.NAMES)  # each kind on one side, once
    assert kinds.SIDECAR_COLUMNS == ("md5", "sha1", "sha256", "pdq")
    assert [kinds.sidecar_column(k) for k in kinds.NAMES] == [None, None, "md5", "sha1", "sha256", "pdq", None]
    assert kinds.sql_list(kinds.URL_DERIVED) == "('url_sha256', 'url_md5', 'domain')"
    assert kinds.PDQ.sql == "'pdq'"
    with pytest.raises(ValueError, match="unknown kind 'url_sha1': expected one of url_sha256, url_md5"):
        kinds.by_name("url_sha1")


def test_the_modules_group_kinds_as_the_registry_does(tmp_path):
    everything = set(kinds.NAMES)
    inputs = matching.MatchInputs("s", "s.parquet", None, "l.parquet", "sidecar.parquet", kinds.SIDECAR_COLUMNS)
    assert matching.image_kinds(inputs, everything) == list(kinds.SIDECAR_EXACT)
    assert matching.near_kinds(inputs, everything)
    partial = matching.MatchInputs("s", "s.parquet", None, "l.parquet", "sidecar.parquet", ("sha1",))
    assert matching.image_kinds(partial, everything) == ["image_sha1"] and not matching.near_kinds(partial, everything)
    # without a sidecar, every image kind (and only those) is named as what the shard cannot be matched against
    gap = pipeline.image_gap(Settings(sidecars=""), "s", everything, None, ())
    assert "(image_md5, image_sha1, image_sha256, pdq)" in gap
    assert pipeline.image_gap(Settings(sidecars=""), "s", set(kinds.URL_DERIVED), None, ()) == ""
    gap = pipeline.image_gap(Settings(), "s", everything, "side.parquet", ("md5", "sha256"))
    assert "side.parquet has no column 'sha1' for image_sha1, 'pdq' for pdq entries of the lists" in gap
    # the lookup-hash index is asked about exactly the URL-derived entries
    con = duckdb.connect()
    con.register("entries", pa.table({"kind": list(kinds.NAMES), "value": ["ab" * 8] * 7, "source": ["s"] * 7,
                                      "category": ["c"] * 7}))  # fmt: skip
    got = [k for (k,) in con.sql(f"SELECT kind FROM ({index.list_keys_sql('SELECT * FROM entries')})").fetchall()]
    assert sorted(got) == sorted(kinds.URL_DERIVED)


def test_each_kind_matches_its_row_and_says_why_with_its_label(tmp_path):
    urls = [f"http://row{i}.example.com/{i}.jpg" for i in range(8)]
    urls[6] = "http://cdn.optout.example/6.jpg"
    pdq_hash = "0f" * 32
    shard, sidecar = tmp_path / "shard.parquet", tmp_path / "sidecar.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(8)], "url": urls, "caption": ["c"] * 8}), shard)
    images = {2: b"image-2", 3: b"image-3", 4: b"image-4"}
    pq.write_table(
        pa.table(
            {
                "key": ["k2", "k3", "k4", "k5"],
                **{c: [hashlib.new(c, images.get(r, b"x")).hexdigest() for r in (2, 3, 4, 5)] for c in ("md5", "sha1", "sha256")},
                "pdq": ["00" * 32, "00" * 32, "00" * 32, pdq_hash],
            }
        ),
        sidecar,
    )  # fmt: skip
    entries = {
        "url_sha256": hashlib.sha256(b"row0.example.com/0.jpg").hexdigest(),
        "url_md5": hashlib.md5(b"row1.example.com/").hexdigest(),
        "image_md5": hashlib.md5(images[2]).hexdigest(),
        "image_sha1": hashlib.sha1(images[3]).hexdigest(),
        "image_sha256": hashlib.sha256(images[4]).hexdigest(),
        "pdq": "0e" + "0f" * 31,  # one bit away
        "domain": "optout.example",
    }
    (tmp_path / "lists" / "p").mkdir(parents=True)
    lines = "".join(f"{kind},{value},csam\n" for kind, value in entries.items())
    (tmp_path / "lists" / "p" / "l.csv").write_text("kind,value,category\n" + lines, encoding="utf-8")
    path = blocklists.write(blocklists.load(str(tmp_path / "lists")), str(tmp_path / "work"))
    roles = schemas.detect(pq.read_schema(shard), str(shard))
    inputs = matching.MatchInputs("shard", str(shard), roles, path, str(sidecar), kinds.SIDECAR_COLUMNS)
    removals = matching.find_removals(matching.connect(), inputs, set(entries), Settings())
    got = {r["kind"]: (r["row_key"], r["match"]) for r in removals.to_pylist()}
    assert got == {
        "url_sha256": ("k0", "url"),
        "url_md5": ("k1", "host"),
        "image_md5": ("k2", "image"),
        "image_sha1": ("k3", "image"),
        "image_sha256": ("k4", "image"),
        "pdq": ("k5", "image-near"),
        "domain": ("k6", "host"),
    }
    for kind in kinds.ALL:
        assert kind.label is None or got[kind.name][1] == kind.label


@pytest.mark.parametrize(
    "fields, problem",
    [
        (("URL", Match.URL_EXPRESSION, "x", 64, "sha256"), "lower-case letters"),
        (("u", Match.URL_EXPRESSION, "x", 64, "sha1"), "sha1 digests have 40 hex digits"),
        (("u", Match.URL_EXPRESSION, "x", 64, "nohash"), "not a hashlib algorithm"),
        (("u", Match.URL_EXPRESSION, "x", 64, None), "a digest is named exactly for"),
        (("u", Match.URL_EXPRESSION, "x", 64, "sha256", None, "url"), "fixed label"),
        (("i", Match.SIDECAR_EXACT, "x", 32, "md5", None, "image"), "a sidecar column is named exactly"),
        (("i", Match.SIDECAR_EXACT, "x", 32, "md5", "md5", None), "fixed label"),
        (("n", Match.SIDECAR_NEAR, "x", 64, "sha256", "pdq", "image-near"), "a digest is named exactly for"),
        (("n", Match.SIDECAR_NEAR, "x", 0, None, "pdq", "image-near"), "positive whole number"),
        (("d", Match.HOST_SUFFIX, "x", 32, None, None, "host"), "a host name has no hex_digits"),
        (("d", Match.HOST_SUFFIX, "x", None, None, "md5", "host"), "a sidecar column is named exactly"),
        (("d", "host suffix", "x", None, None, None, "host"), "match must be a Match"),
    ],
)
def test_a_kind_that_contradicts_itself_is_refused_when_declared(fields, problem):
    with pytest.raises(ValueError, match=problem):
        Kind(*fields)


def test_the_declared_kinds_are_frozen():
    with pytest.raises(AttributeError):
        kinds.PDQ.hex_digits = 32


def _code(artifact: cache.Artifact) -> str:
    return cache.code_digest(*(cache.resolve(name) for name in artifact.made_by))


def test_a_changed_declaration_makes_what_reads_it_again_and_nothing_else(monkeypatch):
    """A kind's name no longer stands in the code that matches it, so the digest of that code (which keys every
    cached artifact, relaion_pipeline/core/cache.py) must take the declaration instead."""
    before = {a.name: _code(a) for a in cache.ARTIFACTS}
    monkeypatch.setattr(near_matching, "PDQ", dataclasses.replace(kinds.PDQ, label="image-near-2"))
    assert _code(cache.NEAR_MATCHES) != before[cache.NEAR_MATCHES.name]
    monkeypatch.setattr(index, "URL_MD5", dataclasses.replace(kinds.URL_MD5, name="url_md5_2"))
    assert _code(cache.CANDIDATES) != before[cache.CANDIDATES.name]
    changed = dataclasses.replace(kinds.IMAGE_SHA1, sidecar_column="sha1_2")  # read through by_name
    monkeypatch.setattr(kinds, "ALL", tuple(changed if k is kinds.IMAGE_SHA1 else k for k in kinds.ALL))
    assert _code(cache.IMAGE_HITS) != before[cache.IMAGE_HITS.name]
    for artifact in (cache.STAGED_SAFE, cache.INPUT_DIGEST, cache.REMOVAL_KEYS):  # made without reading a kind
        assert _code(artifact) == before[artifact.name]


# --- tripwire: no module but kinds.py spells a kind's name ------------------------------------------------------

# Strings that are a kind's name but mean something else, each with why: (file, string).
NOT_A_KIND = {
    ("relaion_pipeline/match/images.py", "url_sha256"),  # the image store's column: sha256 of the URL as downloaded
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def kind_literals(source: str) -> list[tuple[int, str, str]]:
    """(line, name, string) of each string constant in Python source (docstrings and comments aside) that spells a
    kind: the name itself, the name quoted for SQL (`'pdq'`), a name with an underscore anywhere in the text (SQL,
    messages), or the start of names being pieced together (`"image_"`)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    quoted = re.compile(r"'(" + "|".join(kinds.NAMES) + r")'")
    compound = re.compile(r"\b(" + "|".join(n for n in kinds.NAMES if "_" in n) + r")\b")
    prefixes = {n[: n.index("_") + 1] for n in kinds.NAMES if "_" in n}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        text = node.value
        hits = [text] if text in kinds.NAMES or text in prefixes else []
        hits += quoted.findall(text) + compound.findall(text)
        hits += [p for p in prefixes if text.endswith(p) and text not in prefixes]
        found += [(node.lineno, name, text) for name in dict.fromkeys(hits)]
    return sorted(found)


def test_tripwire_finds_kind_names_in_code_and_sql_but_not_in_prose():
    source = '''"""Matches pdq and url_md5 entries."""
KINDS = ("url_md5", "other")  # pdq
SQL = f"SELECT * FROM t WHERE kind = 'pdq' AND {x}"
PREFIX = f"image_{c}"
MESSAGE = "no url_sha256 entries"
FINE = "pdq_quality" + "pdq-matches.parquet"
'''
    assert [(line, name) for line, name, _ in kind_literals(source)] == [
        (2, "url_md5"), (3, "pdq"), (4, "image_"), (5, "url_sha256")
    ]  # fmt: skip


def test_no_module_spells_a_kind_name_outside_the_registry():
    files = sorted([*(ROOT / "relaion_pipeline").rglob("*.py"), *(ROOT / "assets").rglob("*.py")])
    assert len(files) > 30
    offences, allowed = [], set()
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        if relative == "relaion_pipeline/lists/kinds.py":
            continue
        for line, name, text in kind_literals(path.read_text(encoding="utf-8")):
            if (relative, text) in NOT_A_KIND:
                allowed.add((relative, text))
            else:
                offences.append(
                    f"{relative}:{line}: kind {name!r} spelled in {text!r}: use relaion_pipeline.lists.kinds"
                )
    assert not offences, "\n".join(offences)
    assert allowed == NOT_A_KIND  # an exception that no longer applies is removed
