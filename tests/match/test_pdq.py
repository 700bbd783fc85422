"""PDQ near matching: exactly the brute-force answer, robust to the edits copies go through, and lists that
carry a match distance per source."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import written

from relaion_pipeline import incremental
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo_images
from relaion_pipeline.lists import blocklists, pdq
from relaion_pipeline.match import images, pdq_index
from relaion_pipeline.match.pdq_index import PdqIndex
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks


def _flip(hex_hash: str, bits, rng) -> str:
    value = bytearray(bytes.fromhex(hex_hash))
    for bit in rng.choice(256, bits, replace=False):
        value[bit // 8] ^= 1 << (bit % 8)
    return value.hex()


def _hashes(rng, n: int) -> list[str]:
    return [rng.bytes(32).hex() for _ in range(n)]


def _near(queries: list[str], entries: list[str], distances: np.ndarray) -> set[tuple[int, int, int]]:
    con = duckdb.connect()
    con.register("q", pa.table({"qid": np.arange(len(queries)), "pdq": queries}))
    con.register("e", pa.table({"eid": np.arange(len(entries)), "pdq": entries, "distance": distances}))
    sql = pdq.near_matches_sql("SELECT * FROM q", "SELECT * FROM e", int(distances.max()))
    return set(con.sql(sql).fetchall())


@pytest.fixture(params=["sorted", "expanded"])
def search_path(request, monkeypatch):
    """Each way `PdqIndex.search` can go: both sides sorted per slot, or a small list's expanded index."""
    monkeypatch.setattr(pdq_index, "EXPANDED_PROBES", 0 if request.param == "sorted" else 1 << 30)
    return request.param


def test_both_near_matchers_equal_brute_force_on_20k_by_20k_hashes(search_path):
    rng = np.random.default_rng(7)
    entries, queries = _hashes(rng, 20_000), _hashes(rng, 20_000)
    for i in range(3_000):  # copies at every distance from 0 to 47 bits, around all three limits
        queries[i] = _flip(entries[(i * 7) % len(entries)], i % 48, rng)
    distances = rng.choice(np.array([15, 31, 40], dtype=np.int32), size=len(entries))

    found = _near(queries, entries, distances)
    rows, hits, bits = PdqIndex.build(entries, distances).search(pdq.to_words(queries))
    expected = pdq.brute_force(pdq.to_words(queries), pdq.to_words(entries), distances)

    assert found == expected, "the DuckDB join"
    assert set(zip(rows.tolist(), hits.tolist(), bits.tolist(), strict=True)) == expected, "the compiled index"
    audit = pdq_index.brute_force(pdq.to_words(queries[:4_000]), pdq.to_words(entries), distances)
    assert audit == {pair for pair in expected if pair[0] < 4_000}, "the research check's compiled brute force"
    within = {d for _, _, d in found}
    assert len(found) > 1_000 and max(within) == 40 and 0 in within, "every distance up to the largest limit"


def test_a_pair_at_the_limit_matches_and_one_bit_more_does_not(search_path):
    rng = np.random.default_rng(1)
    entry = _hashes(rng, 1)[0]
    at, beyond = _flip(entry, 31, rng), _flip(entry, 32, rng)
    assert _near([at, beyond], [entry], np.array([31], dtype=np.int32)) == {(0, 0, 31)}
    rows, hits, bits = PdqIndex.build([entry], np.array([31])).search(pdq.to_words([at, beyond]))
    assert (rows.tolist(), hits.tolist(), bits.tolist()) == ([0], [0], [31])


def test_a_batch_with_more_near_copies_than_a_task_holds_still_finds_them_all(search_path, monkeypatch):
    monkeypatch.setattr(pdq_index, "CAPACITY", 16)
    rng = np.random.default_rng(2)
    entries = _hashes(rng, 2)
    copies = [_flip(entries[0], int(k), rng) for k in rng.integers(0, 10, size=5_000)]  # 78 a task, or more
    rows, hits, bits = PdqIndex.build(entries, np.array([31, 31])).search(pdq.to_words(copies))
    assert rows.tolist() == list(range(5_000)) and set(hits.tolist()) == {0}, "each copy once, near the first"
    assert bits.tolist() == [bin(int(c, 16) ^ int(entries[0], 16)).count("1") for c in copies]


def test_edited_copies_still_match_and_unrelated_pictures_do_not():
    originals = [demo_images.picture(seed) for seed in range(60)]
    hashes = [images.pdq_of(p)[0] for p in originals]
    words = pdq.to_words(hashes)
    for edit, transform in demo_images.TRANSFORMS.items():
        copies = pdq.to_words([images.pdq_of(transform(p))[0] for p in originals])
        distance = sum(np.bitwise_count(words[:, w] ^ copies[:, w]).astype(int) for w in range(4))
        assert np.mean(distance <= pdq.DEFAULT_DISTANCE) >= 0.95, (edit, distance.tolist())
    unrelated = pdq.brute_force(words, words, np.full(len(hashes), pdq.DEFAULT_DISTANCE, dtype=np.int32))
    assert unrelated == {(i, i, 0) for i in range(len(hashes))}, "no two different pictures are within 31 bits"


def test_the_hex_parser_reads_any_string_array_as_the_reference_does():
    """Sliced, chunked and 64-bit-offset arrays, either case; a non-hex byte anywhere, a wrong length or a
    null is no hash (and its words are zero)."""
    rng = np.random.default_rng(6)
    good = _hashes(rng, 40)
    bad = [good[0][:-1] + "g", good[1][:30] + "\u00e9" + good[1][32:], good[2][:-1], good[3] + "0", ""]
    values = good[:20] + [v.upper() for v in good[20:]] + bad + [None]
    expected = pdq.to_words([v.lower() for v in good])
    for strings in (
        pa.array(["x"] * 7 + values, pa.string()).slice(7),
        pa.chunked_array([values[:13], values[13:]], pa.string()),
        pa.array(values, pa.large_string()),
    ):
        words, valid = pdq_index.hex_words(strings)
        assert valid.tolist() == [True] * 40 + [False] * 6
        assert (words[:40] == expected).all() and not words[40:].any()


def test_the_hex_form_is_threatexchanges_big_endian_bit_string():
    bits = np.zeros(256, dtype=np.uint8)
    bits[0] = bits[255] = 1
    assert pdq.hex_of_bits(bits) == "8" + "0" * 62 + "1"
    assert pdq.to_words([pdq.hex_of_bits(bits)]).tolist() == [[1 << 63, 0, 0, 1]]


def _write_list(root, source: str, hashes: list[str], config: dict | None = None):
    folder = root / source
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pdq.txt").write_text("\n".join(hashes) + "\n")
    if config is not None:
        (folder / "source.json").write_text(json.dumps(config))


def test_each_source_carries_its_distance_and_a_change_of_distance_is_a_new_version(tmp_path):
    rng = np.random.default_rng(3)
    _write_list(tmp_path, "strict", _hashes(rng, 3), {"pdq_distance": 12})
    _write_list(tmp_path, "default", _hashes(rng, 2))
    (tmp_path / "urls").mkdir()
    (tmp_path / "urls" / "domain.txt").write_text("example.org\n")

    merged = blocklists.load(str(tmp_path))
    rows = merged.table.to_pylist()
    assert {(r["source"], r["distance"]) for r in rows if r["kind"] == "pdq"} == {("strict", 12), ("default", 31)}
    assert [r["distance"] for r in rows if r["kind"] == "domain"] == [None]

    (tmp_path / "strict" / "source.json").write_text(json.dumps({"pdq_distance": 20}))
    assert blocklists.load(str(tmp_path)).version != merged.version


def test_a_source_config_without_pdq_entries_leaves_the_version_as_it_was(tmp_path):
    (tmp_path / "urls").mkdir()
    (tmp_path / "urls" / "domain.txt").write_text("example.org\n")
    before = blocklists.load(str(tmp_path)).version
    (tmp_path / "urls" / "source.json").write_text(json.dumps({"pdq_distance": 20}))
    assert blocklists.load(str(tmp_path)).version == before


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"pdq_distance": 64}', "pdq_distance is 64, expected a whole number of bits from 0 to 63"),
        ('{"pdq_distance": "31"}', "pdq_distance is '31', expected a whole number of bits from 0 to 63"),
        ('{"distance": 31}', "unknown setting(s) distance: expected only pdq_distance"),
        ("{pdq_distance: 31", "not valid JSON"),
        ('{"pdq_distance": 10, "pdq_distance": 40}', "setting pdq_distance given twice: expected each setting once"),
    ],
)
def test_a_bad_source_config_is_named(tmp_path, config, expected):
    _write_list(tmp_path, "partner", _hashes(np.random.default_rng(0), 1))
    (tmp_path / "partner" / "source.json").write_text(config)
    with pytest.raises(blocklists.BlocklistError) as error:
        blocklists.load(str(tmp_path))
    assert str(error.value).startswith("partner/source.json: ") and expected in str(error.value)


def test_a_pdq_value_of_the_wrong_length_is_named_with_its_line(tmp_path):
    _write_list(tmp_path, "partner", ["ab" * 32, "ab" * 31])
    with pytest.raises(blocklists.BlocklistError, match=r"partner/pdq.txt:2: pdq value has 62 characters, expected 64"):
        blocklists.load(str(tmp_path))


def _shown(settings, key: str) -> str:
    """A row key of shard `s` as removals and check failures write it (its key column is text: `row_keys`)."""
    return written(Path(settings.shards) / "s.parquet", [key])[0]


@pytest.fixture
def pdq_shard(tmp_path):
    """A 600-row shard whose sidecar holds random PDQ hashes, some near the entries of a partner list, some of
    them with a quality too low to be matched."""
    rng = np.random.default_rng(5)
    n = 600
    side, entries = _hashes(rng, n), _hashes(rng, 200)
    for i in range(60):
        side[i * 9] = _flip(entries[i], i % 40, rng)
    quality = np.full(n, 90, dtype=np.int16)
    quality[::5] = 20
    (tmp_path / "in" / "shards").mkdir(parents=True)
    (tmp_path / "in" / "sidecars").mkdir()
    keys = [f"row-{i}" for i in range(n)]
    urls = [f"http://img{i}.example.com/p.jpg" for i in range(n)]
    pq.write_table(pa.table({"key": keys, "url": urls, "caption": ["a picture"] * n}), tmp_path / "in/shards/s.parquet")
    sidecar = pa.table({"key": keys, "pdq": side, "pdq_quality": quality})
    pq.write_table(sidecar, tmp_path / "in/sidecars/s.parquet")
    _write_list(tmp_path / "in" / "blocklists", "ncmec", entries, {"pdq_distance": 25})
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    expected = {
        (keys[q], d)
        for q, _, d in pdq.brute_force(pdq.to_words(side), pdq.to_words(entries), np.full(200, 25, dtype=np.int32))
        if quality[q] >= pdq.MIN_QUALITY
    }
    return settings, expected, int((quality < pdq.MIN_QUALITY).sum())


def test_a_shard_loses_exactly_the_rows_near_a_listed_hash_with_their_distance(pdq_shard):
    settings, expected, low_quality = pdq_shard
    pipeline.build_blocklist(settings)
    stats = pipeline.compute_removals(settings, "s")

    removals = pq.read_table(pipeline.Work(settings.work).removals("s")).to_pylist()
    assert {(r["row_key"], r["distance"]) for r in removals} == {(_shown(settings, k), d) for k, d in expected}
    assert {(r["kind"], r["source"], r["match"]) for r in removals} == {("pdq", "ncmec", "image-near")}
    assert stats.pdq_low_quality_rows == low_quality and stats.rows_removed == len(expected)
    assert 10 < len(expected) < 60, "some planted copies are beyond 25 bits or of low quality"


def test_the_research_check_catches_a_published_near_copy(pdq_shard):
    settings, expected, _ = pdq_shard
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "s")
    pipeline.write_research(settings, "s")
    assert all(o.success for o in checks.check_research(settings, "s"))

    research = pipeline.Work(settings.work).variant("research", "s")
    pq.write_table(pq.read_table(settings.shards + "/s.parquet"), research)  # as if nothing had been removed
    outcome = next(o for o in checks.check_research(settings, "s") if o.suite == checks.RESEARCH_NO_MATCH)
    assert not outcome.success
    assert outcome.statistics["pdq_audited_rows"] == 480, "every row of good quality, the shard being small"
    shown = json.dumps([f.__dict__ for f in outcome.failures])
    assert any(_shown(settings, key) in shown for key, _ in expected) and "http://" not in shown


def test_a_new_pdq_entry_touches_only_the_shard_with_an_image_near_it(pdq_shard):
    settings, _, _ = pdq_shard
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "s")
    pipeline.write_research(settings, "s")
    pipeline.write_research_safe(settings, "s")
    lists = Path(settings.blocklists)
    rng = np.random.default_rng(9)

    _write_list(lists, "far", _hashes(rng, 1))  # ~128 bits from every image
    pipeline.build_blocklist(settings)
    assert incremental.verify_untouched(settings, ["s"])["verified"] == ["s"]

    sidecar = pq.read_table(Path(settings.sidecars) / "s.parquet").to_pylist()
    kept = next(r["pdq"] for r in sidecar[1:] if r["pdq_quality"] >= pdq.MIN_QUALITY)
    _write_list(lists, "near", [_flip(kept, 30, rng)])
    pipeline.build_blocklist(settings)
    update = incremental.verify_untouched(settings, ["s"])
    assert update["verified"] == [] and update["touched"] == {"s": "a PDQ hash of its sidecar is near a changed entry"}


def _removals_twice(settings):
    """The shard's removals (as rows) and how near matching found them; then again with nothing remembered."""
    from relaion_pipeline.core import cache

    work = pipeline.Work(settings.work)
    how = pipeline.compute_removals(settings, "s").near_matching
    remembered = pq.read_table(work.removals("s"))
    Path(cache.path(settings.work, "s", cache.NEAR_MATCHES)).unlink()
    fresh = pipeline.compute_removals(settings, "s").near_matching
    assert fresh.from_list is None
    assert pq.read_table(work.removals("s")).equals(remembered), "as a search of the whole list finds"
    return remembered.to_pylist(), how


def test_a_new_list_version_searches_only_the_pdq_values_it_added_or_widened(pdq_shard):
    """The near matches are kept beside the index: a new list version searches the shard's hashes only for
    values that are new or matched within a larger distance, and the removals are byte for byte what a
    search of the whole list gives, for entries added, removed, narrowed, widened and listed twice."""
    settings, _, _ = pdq_shard
    lists, rng = Path(settings.blocklists), np.random.default_rng(12)
    entries = (lists / "ncmec" / "pdq.txt").read_text().split()
    sidecar = pq.read_table(Path(settings.sidecars) / "s.parquet").to_pylist()
    good = next(r for r in sidecar[1::9] if r["pdq_quality"] >= pdq.MIN_QUALITY)  # near no entry
    pipeline.build_blocklist(settings)
    assert pipeline.compute_removals(settings, "s").near_matching.entries_searched == 200
    first = pipeline.read_stats(settings, "removals", "s").blocklist_version

    _write_list(lists, "added", [_flip(good["pdq"], 10, rng), _hashes(rng, 1)[0]])
    (lists / "ncmec" / "pdq.txt").write_text("\n".join(entries[5:]) + "\n")  # 5 entries removed
    pipeline.build_blocklist(settings)
    rows, how = _removals_twice(settings)
    assert how.from_list == f"blocklist-{first}.parquet" and how.entries_searched == 2
    assert (_shown(settings, good["key"]), "added", 10) in {(r["row_key"], r["source"], r["distance"]) for r in rows}
    assert not {r["hash"] for r in rows} & set(entries[:5])

    (lists / "ncmec" / "source.json").write_text(json.dumps({"pdq_distance": 18}))  # narrower: nothing searched
    pipeline.build_blocklist(settings)
    narrow, how = _removals_twice(settings)
    assert how.entries_searched == 0 and 0 < len(narrow) < len(rows)

    (lists / "ncmec" / "source.json").write_text(json.dumps({"pdq_distance": 40}))  # wider: its 195 values
    _write_list(lists, "twice", entries[10:12], {"pdq_distance": 12})  # values ncmec lists too, within 12
    pipeline.build_blocklist(settings)
    wide, how = _removals_twice(settings)
    assert how.entries_searched == 195 and len(wide) > len(rows)
    twice = {r["hash"] for r in wide if r["source"] == "twice"}
    assert all(r["distance"] <= 12 for r in wide if r["source"] == "twice") and twice <= set(entries[10:12])

    pipeline.write_research(settings, "s")
    assert all(o.success for o in checks.check_research(settings, "s"))


def test_a_shard_with_no_near_match_remembers_none_and_finds_one_a_new_version_adds(pdq_shard):
    settings, _, _ = pdq_shard
    lists, rng = Path(settings.blocklists), np.random.default_rng(14)
    (lists / "ncmec" / "pdq.txt").write_text("\n".join(_hashes(rng, 3)) + "\n")  # ~128 bits from every hash
    pipeline.build_blocklist(settings)
    assert pipeline.compute_removals(settings, "s").rows_removed == 0
    sidecar = pq.read_table(Path(settings.sidecars) / "s.parquet").to_pylist()
    good = next(r for r in sidecar if r["pdq_quality"] >= pdq.MIN_QUALITY)
    _write_list(lists, "added", [_flip(good["pdq"], 4, rng)])
    pipeline.build_blocklist(settings)
    rows, how = _removals_twice(settings)
    assert how.entries_searched == 1 and [(r["row_key"], r["distance"]) for r in rows] == [
        (_shown(settings, good["key"]), 4)
    ]


def test_remembered_near_matches_are_not_used_for_a_changed_sidecar_or_a_list_no_longer_kept(pdq_shard):
    settings, _, _ = pdq_shard
    lists, rng = Path(settings.blocklists), np.random.default_rng(13)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "s")
    _write_list(lists, "added", _hashes(rng, 1))
    first = pipeline.read_stats(settings, "removals", "s").blocklist_version
    pipeline.build_blocklist(settings)
    Path(pipeline.Work(settings.work).blocklist_dir, f"blocklist-{first}.parquet").unlink()
    how = pipeline.compute_removals(settings, "s").near_matching
    assert how.from_list is None and how.entries_searched == 201, "the list it was matched with is gone"

    path = Path(settings.sidecars) / "s.parquet"
    sidecar = pq.read_table(path)
    flipped = [_flip(h, 3, rng) for h in sidecar.column("pdq").to_pylist()]
    pq.write_table(sidecar.set_column(1, "pdq", pa.array(flipped)), path)
    _write_list(lists, "more", _hashes(rng, 1))
    pipeline.build_blocklist(settings)
    how = pipeline.compute_removals(settings, "s").near_matching
    assert how.from_list is None and how.entries_searched == 202, "the sidecar changed"


def test_a_hash_of_unknown_quality_is_matched_and_one_of_low_quality_is_not(tmp_path):
    """Quality and form decide which sidecar hashes can match: unknown, out-of-range or 50+ quality, 64 hex
    digits of either case; a hash that is not hex digits, too short or missing is left alone, without failing
    the shard, and counted with a warning, as is a quality outside 0-100."""
    rng = np.random.default_rng(4)
    entry = _hashes(rng, 1)[0]
    near = _flip(entry, 5, rng)
    (tmp_path / "in" / "shards").mkdir(parents=True)
    (tmp_path / "in" / "sidecars").mkdir()
    keys = ["unknown", "low", "good", "upper-case", "not-hex", "short", "none", "over-100", "negative"]
    pq.write_table(
        pa.table({"key": keys, "url": [f"http://{k}.example.com/a.jpg" for k in keys], "caption": keys}),
        tmp_path / "in" / "shards" / "s.parquet",
    )
    hashes = [near, near, near, near.upper(), near[:-1] + "g", near[:-2], None, near, near]
    sidecar = pa.table(
        {"key": keys, "pdq": hashes, "pdq_quality": pa.array([None, 10, 80, 80, 80, 80, 80, 200, -5], pa.int16())}
    )
    pq.write_table(sidecar, tmp_path / "in" / "sidecars" / "s.parquet")
    _write_list(tmp_path / "in" / "blocklists", "partner", [entry])
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    pipeline.build_blocklist(settings)
    stats = pipeline.compute_removals(settings, "s")
    removed = [keys[n] for n in pipeline.Work(settings.work).removed_rows("s")]
    assert removed == ["unknown", "good", "upper-case", "over-100", "negative"], "a damaged quality never hides one"
    assert stats.pdq_low_quality_rows == 1 and stats.pdq_malformed_rows == 2
    assert stats.pdq_quality_out_of_range_rows == 2 and len(stats.warnings) == 2
    pipeline.write_research(settings, "s")
    assert all(o.success for o in checks.check_research(settings, "s")), "the audit applies the same rule"


def test_the_audit_sample_spreads_over_the_whole_sidecar_and_is_repeatable(tmp_path):
    """The research check's PDQ audit draws every k-th sidecar row from a seeded start: up to `sample` rows
    from the first to the last part of the file, the same ones for the same seed, and only matchable hashes
    (64 characters, quality 50+ or unknown) whose key is a row key of the shard."""
    from relaion_pipeline.match import matching, near_matching

    rng = np.random.default_rng(11)
    n = 10_000
    keys = [f"k{i}" for i in range(n)]
    quality = np.where(np.arange(n) % 200 == 7, 20, 90).astype(np.int16)  # a quarter of the rows drawn: too low
    pq.write_table(pa.table({"key": keys[: n - 500], "url": ["http://a.example/"] * (n - 500)}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"key": keys, "pdq": _hashes(rng, n), "pdq_quality": quality}), tmp_path / "c.parquet")
    roles = matching.schemas.Roles(family="t", url="url", caption=None, key="key")
    inputs = matching.MatchInputs("s", str(tmp_path / "s.parquet"), roles, "", str(tmp_path / "c.parquet"),
                                  ("key", "pdq", "pdq_quality"))  # fmt: skip
    con = duckdb.connect()

    def drawn(seed: int) -> list[int]:
        sql = near_matching.sidecar_hashes_sql(inputs, sample=100, seed=seed, sidecar_rows=n)
        return con.sql(sql).to_arrow_table().column("row_number").to_pylist()

    first = drawn(7)
    assert len(first) == 100 and first == sorted(first), "100 of the ~143 matchable rows of every 50th"
    assert first[0] < 400 and first[-1] > n - 1_000, "from the start to the end of the file (the last 500 keys unknown)"
    assert all(row < n - 500 and row % 200 != 7 and row % 50 == 7 for row in first), "matchable rows drawn only"
    assert drawn(7) == first and drawn(8) != first
