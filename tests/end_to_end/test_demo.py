"""The demo data generator: layout, schemas, determinism, harmless hosts and a trustworthy planted.json.

planted.json is checked against an independent brute force over the written files (partner lists, sidecars,
keyword list), so the pipeline's own tests can rely on it as ground truth.
"""

from __future__ import annotations

import csv
import io
import json
import re
from ipaddress import ip_address, ip_network
from pathlib import Path

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.canonical.urls import lookup_expressions, parse
from relaion_pipeline.core import schemas
from relaion_pipeline.demo_data import demo

ROWS, SHARDS = 2000, 4
NAMES = ["joined/part-00000", "plain/part-00001", "relaion/part-00002", "minimal/part-00003"]
TYPES = {
    "joined": [("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int64()), ("HEIGHT", pa.int64()),
               ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()),
               ("pwatermark", pa.float32())],
    "plain": [("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()), ("HEIGHT", pa.float64()),
              ("WIDTH", pa.float64()), ("LICENSE", pa.string()), ("NSFW", pa.string()),
              ("similarity", pa.float64())],
    "relaion": [("key", pa.string()), ("hash", pa.int64()), ("url", pa.string()), ("caption", pa.string()),
                ("similarity", pa.float64()), ("punsafe", pa.float32()), ("pwatermark", pa.float32()),
                ("original_width", pa.int64()), ("original_height", pa.int64())],
    "minimal": [("URL", pa.string()), ("TEXT", pa.string()), ("__index_level_0__", pa.int64())],
}  # fmt: skip
DETECTED = {"joined": "laion-joined", "plain": "laion-plain", "relaion": "relaion", "minimal": "minimal"}
RESERVED = ("example.com", "example.org", "example.net", "example", "test")
DOC_NETS = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
HASHERS = {"image_md5": "md5", "image_sha1": "sha1", "image_sha256": "sha256"}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo")
    demo.generate(path, shards=SHARDS, rows=ROWS, seed=0)
    return path


@pytest.fixture(scope="module")
def planted(out) -> dict:
    return json.loads((out / "planted.json").read_text())


def shard_frame(out: Path, name: str) -> dict:
    """url, caption, keys, unsafe flag and the table of one shard, by the pipeline's row-key rules."""
    table = pq.read_table(out / "shards" / f"{name}.parquet")
    family = name.split("/")[0]
    url_col, text_col = ("url", "caption") if family == "relaion" else ("URL", "TEXT")
    if family == "joined":
        keys = [str(h) for h in table["hash"].to_pylist()]
    elif family == "plain":
        keys = [str(s) for s in table["SAMPLE_ID"].to_pylist()]
    elif family == "relaion":
        keys = table["key"].to_pylist()
    else:
        keys = [f"{name}:{row}" for row in range(table.num_rows)]
    if "punsafe" in table.column_names:
        unsafe = [p > 0.95 for p in table["punsafe"].to_pylist()]
    elif "NSFW" in table.column_names:
        unsafe = [tag == "NSFW" for tag in table["NSFW"].to_pylist()]
    else:
        unsafe = [False] * table.num_rows
    return {
        "table": table,
        "urls": table[url_col].to_pylist(),
        "captions": table[text_col].to_pylist(),
        "keys": keys,
        "unsafe": unsafe,
    }


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_lists(root: Path) -> dict[tuple[str, str], set[str]]:
    """(source, kind) -> lower-cased values, read from the partner lists as a list parser would."""
    entries: dict[tuple[str, str], set[str]] = {}

    def add(source, kind, value):
        entries.setdefault((source, kind), set()).add(value.strip().lower())

    for path in sorted(p for p in (root / "blocklists").rglob("*") if p.is_file() and p.name != "source.json"):
        source = path.parent.name
        if path.suffix == ".parquet":
            for row in pq.read_table(path).to_pylist():
                add(source, row["kind"], row["value"])
            continue
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if path.suffix == ".txt":
            for line in lines:
                add(source, path.stem, line)
        else:
            rows = csv.reader(io.StringIO("\n".join(lines)), delimiter="\t" if path.suffix == ".tsv" else ",")
            assert next(rows) == ["kind", "value", "category"]
            for kind, value, _category in rows:
                add(source, kind, value)
    return entries


def test_every_family_is_written_with_its_exact_schema(out):
    assert sorted(all_files(out / "shards")) == [f"{n}.parquet" for n in sorted(NAMES)]
    assert sorted(all_files(out / "sidecars")) == [f"{n}.parquet" for n in sorted(NAMES)]  # every shard hashed
    for name in NAMES:
        family = name.split("/")[0]
        schema = pq.read_schema(out / "shards" / f"{name}.parquet")
        assert [(f.name, f.type) for f in schema] == TYPES[family], name
        assert schemas.detect(schema, name).family == DETECTED[family]
        assert pq.read_metadata(out / "shards" / f"{name}.parquet").num_rows == ROWS
    minimal = pq.read_schema(out / "shards" / "minimal/part-00003.parquet")
    assert minimal.pandas_metadata["index_columns"] == ["__index_level_0__"]
    sidecar = pq.read_schema(out / "sidecars" / "joined/part-00000.parquet")
    assert [(f.name, f.type) for f in sidecar] == [
        (c, pa.string()) for c in ("key", "md5", "sha1", "sha256", "pdq")
    ] + [("pdq_quality", pa.int16())]


def test_columns_hold_realistic_values(out):
    joined = shard_frame(out, "joined/part-00000")
    table = joined["table"]
    expected = [
        mmh3.hash64((u + t).encode("utf-8"), signed=True)[0]
        for u, t in zip(joined["urls"], joined["captions"], strict=True)
    ]
    assert table["hash"].to_pylist() == expected
    punsafe = table["punsafe"].to_numpy()
    assert 0.7 < np.mean(punsafe < 0.2) < 0.9 and 0.03 < np.mean(punsafe > 0.45) < 0.1
    assert 0.005 < np.mean(punsafe > 0.95) < 0.03
    similarity = table["similarity"].to_numpy()
    assert similarity.min() >= 0.25 and similarity.max() <= 0.45
    plain = pq.read_table(out / "shards" / "plain/part-00001.parquet")
    assert plain["HEIGHT"].is_null().to_pylist() == plain["WIDTH"].is_null().to_pylist()
    assert 0 < plain["HEIGHT"].null_count < ROWS * 0.05
    assert set(plain["NSFW"].to_pylist()) == {"UNLIKELY", "UNSURE", "NSFW"}
    assert set(plain["LICENSE"].to_pylist()) == {"?", None}
    captions = joined["captions"]
    assert "" in captions and any(not c.isascii() for c in captions)
    urls = [u for n in NAMES for u in shard_frame(out, n)["urls"]]
    assert 70 < np.mean([len(u) for u in urls]) < 130 and max(len(u) for u in urls) > 250
    for marker in ("#", "%20", "%2F", "%25", ":8080", "/./", "/../", "@", "\t", "http://"):
        assert any(marker in u for u in urls), marker
    assert any(not u.isascii() for u in urls)
    assert any(re.match(r"https?://\d+/", u) for u in urls)  # an IP host written as one decimal number
    assert any(re.match(r"https?://[^/]*[A-Z]", u) for u in urls)  # upper-case host
    irregular = sum(u != parse(u).__str__() for u in urls)
    assert 0.2 < irregular / len(urls) < 0.5
    hosts = {parse(u).host for u in urls}
    assert 100 < len(hosts) < len(urls) / 5  # hosts repeat, as in real data


def test_row_keys_are_unique(tmp_path):
    demo.generate(tmp_path, shards=8, rows=300, seed=3)
    seen = set()
    for i in range(8):
        name = f"{demo.FAMILIES[i % 4]}/part-{i:05d}"
        keys = shard_frame(tmp_path, name)["keys"]
        assert len(set(keys)) == len(keys), name
        assert not seen & set(keys), name
        seen |= set(keys)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(out, tmp_path):
    again = tmp_path / "again"
    demo.generate(again, shards=SHARDS, rows=ROWS, seed=0)
    assert all_files(again) == all_files(out)
    other = tmp_path / "other"
    demo.generate(other, shards=SHARDS, rows=ROWS, seed=1)
    first, second = all_files(out), all_files(other)
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if not name.endswith("source.json")), "data differs"


def test_list_rows_gives_shards_of_any_size_the_same_lists(tmp_path):
    def entries(folder: str) -> set[str]:
        return set((tmp_path / folder / "blocklists" / "partner-b" / "url_md5.txt").read_text().splitlines()[1:])

    demo.generate(tmp_path / "small", shards=1, rows=4000, seed=2)
    demo.generate(tmp_path / "large", shards=1, rows=8000, seed=2)
    demo.generate(tmp_path / "fixed", shards=1, rows=8000, seed=2, list_rows=4000)
    small, large, fixed = entries("small"), entries("large"), entries("fixed")
    assert len(large) > 1.8 * len(small), "the noise is sized for the shard"
    assert len(fixed & small) > 0.9 * len(small) and len(fixed) < 1.1 * len(small), "the same noise for list_rows"
    assert pq.read_metadata(tmp_path / "fixed" / "shards" / "joined" / "part-00000.parquet").num_rows == 8000


def test_every_kind_is_planted_in_every_shard_that_can_hold_it(out, planted):
    assert set(planted) == {"_entries", *NAMES}
    for name in NAMES:
        keys = set(shard_frame(out, name)["keys"])
        assert set(planted[name]) == set(demo.KINDS)
        for kind, matched in planted[name].items():
            assert matched == sorted(matched) and set(matched) <= keys, (name, kind)
            expected = 0 if "minimal" in name and kind.startswith(("image", "keyword", "pdq")) else 2
            assert len(matched) >= expected, (name, kind)


def test_planted_json_is_what_a_brute_force_over_the_files_finds(out, planted):
    lists = read_lists(out)
    values = {kind: set().union(*(v for (_, k), v in lists.items() if k == kind)) for kind in demo.KINDS[:-1]}
    keyword = re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(k) for k in demo.load_keywords()) + r")(?!\w)", re.IGNORECASE
    )
    for name in NAMES:
        shard = shard_frame(out, name)
        images = {}
        if (out / "sidecars" / f"{name}.parquet").exists():
            images = {row["key"]: row for row in pq.read_table(out / "sidecars" / f"{name}.parquet").to_pylist()}
        found = {kind: [] for kind in demo.KINDS}
        for url, caption, key, unsafe in zip(
            shard["urls"], shard["captions"], shard["keys"], shard["unsafe"], strict=True
        ):
            expressions = lookup_expressions(url)
            host = parse(url).host
            hits = {
                "url_sha256": any(demo._sha256(e) in values["url_sha256"] for e in expressions),
                "url_md5": any(demo._md5(e) in values["url_md5"] for e in expressions),
                "domain": any(host == d or host.endswith("." + d) for d in values["domain"]),
                "keyword": unsafe and bool(keyword.search(caption)),
            }
            for kind, column in HASHERS.items():
                hits[kind] = key in images and images[key][column] in values[kind]
            image = images.get(key)
            hits["pdq"] = (
                image is not None
                and image["pdq_quality"] >= 50
                and min((int(image["pdq"], 16) ^ int(v, 16)).bit_count() for v in values["pdq"]) <= 31
            )
            for kind in (k for k, hit in hits.items() if hit):
                found[kind].append(key)
        assert {k: sorted(v) for k, v in found.items()} == planted[name], name
    counts = {source: {} for source, _ in lists}
    for (source, kind), got in lists.items():
        counts[source][kind] = len(got)
    assert planted["_entries"] == counts


def test_construction_agrees_with_brute_force(tmp_path, planted, monkeypatch):
    """Big runs skip the full brute force: planted rows must then be the only rows that can match."""
    monkeypatch.setattr(demo, "ORACLE_MAX_ROWS", 0)
    assert demo.generate(tmp_path, shards=SHARDS, rows=ROWS, seed=0) == planted


def test_keyword_decoys_are_present_and_not_planted(out, planted):
    pattern = re.compile(r"(?<!\w)(?:forbiddenterm|placeholder-keyword|redacted example phrase)(?!\w)", re.I)
    for name in NAMES[:3]:
        shard = shard_frame(out, name)
        rows = list(zip(shard["captions"], shard["keys"], shard["unsafe"], strict=True))
        low_score = [k for c, k, unsafe in rows if pattern.search(c) and not unsafe]
        no_keyword = [k for c, k, unsafe in rows if unsafe and not pattern.search(c)]
        inside_word = [k for c, k, unsafe in rows if unsafe and re.search("forbiddenterms", c, re.I)]
        assert len(low_score) >= 2 and len(no_keyword) >= 2 and inside_word, name
        assert not set(low_score + no_keyword + inside_word) & set(planted[name]["keyword"])


def test_planted_json_holds_no_url_or_caption(out):
    text = (out / "planted.json").read_text()
    for name in NAMES:
        shard = shard_frame(out, name)
        assert not any(u.strip() in text for u in shard["urls"])
        assert not any(c in text for c in shard["captions"] if len(c) > 10)
        assert not any(parse(u).host in text for u in shard["urls"])  # not even a host


def test_every_host_is_reserved_or_a_documentation_ip(out):
    for name in NAMES:
        for url in shard_frame(out, name)["urls"]:
            host = parse(url).host
            if re.fullmatch(r"[\d.]+", host):
                assert any(ip_address(host) in net for net in DOC_NETS), url
            else:
                assert host.endswith(tuple("." + r for r in RESERVED)) or host in RESERVED, url
    domains = (out / "blocklists" / "opt-out" / "domains.csv").read_text().splitlines()[1:]
    assert all(line.split(",")[1].endswith(".example.net") for line in domains)


def test_sidecars_cover_most_rows_with_lower_case_hex(out, planted):
    for name in NAMES[:3]:
        sidecar = pq.read_table(out / "sidecars" / f"{name}.parquet")
        keys = set(shard_frame(out, name)["keys"])
        assert 0.9 * ROWS < sidecar.num_rows < ROWS and set(sidecar["key"].to_pylist()) <= keys
        for column, size in (("md5", 32), ("sha1", 40), ("sha256", 64)):
            assert all(re.fullmatch(f"[0-9a-f]{{{size}}}", v) for v in sidecar[column].to_pylist())
        covered = set(sidecar["key"].to_pylist())
        assert all(set(planted[name][kind]) <= covered for kind in HASHERS)


def test_partner_lists_have_the_quirks_parsers_must_handle(out):
    root = out / "blocklists"
    assert sorted(all_files(root)) == [
        "hrw-privacy/list.tsv", "opt-out/domains.csv", "partner-a/hashes.csv",
        "partner-b/images.parquet", "partner-b/url_md5.txt", "pdq-partner/pdq.csv", "pdq-partner/source.json",
    ]  # fmt: skip
    lines = (root / "partner-a" / "hashes.csv").read_text().splitlines()
    assert lines[0].startswith("#") and lines[1] == "kind,value,category"
    data = [line for line in lines[2:] if not line.startswith("#")]
    assert len(data) < len(lines) - 2  # a comment among the entries
    assert len(set(data)) == len(data) - 1  # one duplicate line
    assert any(re.search("[A-F]", line.split(",")[1]) for line in data)  # some upper-case hex
    assert {line.split(",")[0] for line in data} == {"url_sha256", "image_md5"}
    assert len(data) >= 200
    images = pq.read_table(root / "partner-b" / "images.parquet")
    assert images.column_names == ["kind", "value", "category"]
    assert set(images["kind"].to_pylist()) == {"image_sha1", "image_sha256"}
    assert (root / "hrw-privacy" / "list.tsv").read_text().splitlines()[0] == "kind\tvalue\tcategory"
    assert {line.split("\t")[2] for line in (root / "hrw-privacy" / "list.tsv").read_text().splitlines()[1:]} == {
        "privacy"
    }


def test_refuses_to_write_into_existing_output(out, tmp_path):
    before = all_files(out)
    with pytest.raises(ValueError, match="already holds shards"):
        demo.generate(out, shards=1, rows=200)
    assert all_files(out) == before
    with pytest.raises(ValueError, match="rows >= "):
        demo.generate(tmp_path / "tiny", shards=1, rows=10)
