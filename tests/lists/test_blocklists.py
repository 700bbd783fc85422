"""Partner lists: every file format, normalization, merging, versioning, and errors that name file and line."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.lists import blocklists
from relaion_pipeline.lists.blocklists import BlocklistError

SHA = hashlib.sha256(b"a.example.com/").hexdigest()
SHA2 = hashlib.sha256(b"b.example.com/x").hexdigest()
MD5 = hashlib.md5(b"c.example.com/").hexdigest()
SHA1 = hashlib.sha1(b"image").hexdigest()


def write(root, relative, text):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def rows(blocklist):
    return sorted(
        zip(*(blocklist.table.column(c).to_pylist() for c in ("kind", "value", "source", "category")), strict=True)
    )


def test_every_format_is_read_and_merged_with_source_and_category(tmp_path):
    write(tmp_path, "iwf/hashes.csv", f"kind,value,category\n# comment line\nurl_sha256,{SHA.upper()},csam\n")
    write(tmp_path, "c3p/list.tsv", f"kind\tvalue\tcategory\nurl_sha256\t{SHA2}\tcsam  # trailing comment\n")
    write(tmp_path, "c3p/url_md5.txt", f"# md5 of expressions\n{MD5}\n\n")
    table = pa.table({"kind": ["image_sha1"], "value": [SHA1], "category": ["privacy"]})
    (tmp_path / "hrw").mkdir()
    pq.write_table(table, tmp_path / "hrw" / "images.parquet")
    write(tmp_path, "optout/domains.csv", "kind,value\ndomain,Blocked.Example.\n")

    merged = blocklists.load(str(tmp_path))

    assert rows(merged) == sorted(
        [
            ("url_sha256", SHA, "iwf", "csam"),
            ("url_sha256", SHA2, "c3p", "csam"),
            ("url_md5", MD5, "c3p", "unspecified"),
            ("image_sha1", SHA1, "hrw", "privacy"),
            ("domain", "blocked.example", "optout", "unspecified"),
        ]
    )
    assert merged.sources == ["c3p", "hrw", "iwf", "optout"]
    assert merged.counts["c3p"] == {"url_md5": 1, "url_sha256": 1}


def test_duplicates_are_merged_and_version_ignores_layout_and_order(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write(
        one, "src/a.csv", f"kind,value,category\nurl_sha256,{SHA},csam\nurl_sha256,{SHA2},csam\nurl_sha256,{SHA},csam\n"
    )
    write(two, "src/b.csv", f"kind,value,category\nurl_sha256,{SHA2.upper()},csam\n")
    write(two, "src/c.csv", f"kind,value,category\nurl_sha256,{SHA},csam\n")

    first, second = blocklists.load(str(one)), blocklists.load(str(two))

    assert first.entries == 2
    assert first.version == second.version


def test_version_changes_when_an_entry_or_its_category_changes(tmp_path):
    write(tmp_path, "src/a.csv", f"kind,value,category\nurl_sha256,{SHA},csam\n")
    before = blocklists.load(str(tmp_path)).version
    write(tmp_path, "src/a.csv", f"kind,value,category\nurl_sha256,{SHA},privacy\n")
    assert blocklists.load(str(tmp_path)).version != before


def test_bom_and_crlf_line_ends_are_accepted(tmp_path):
    write(tmp_path, "src/a.csv", f"\ufeffkind,value,category\r\nurl_sha256,{SHA},csam\r\n".encode())
    assert rows(blocklists.load(str(tmp_path))) == [("url_sha256", SHA, "src", "csam")]


@pytest.mark.parametrize(
    "content, expected",
    [
        (f"kind,value\nurl_sha256,{SHA[:-1]}\n", "src/a.csv:2: url_sha256 value has 63 characters, expected 64"),
        (f"kind,value\nurl_md5,{'z' * 32}\n", "src/a.csv:2: url_md5 value is not hexadecimal"),
        (f"kind,value\n# c\nurl_sha1,{SHA1}\n", "src/a.csv:3: unknown kind 'url_sha1'"),
        (f"{SHA}\n", "src/a.csv:1: header is"),
        ("kind,value\ndomain,http://x.example/\n", "src/a.csv:2: domain value is not a plain host name"),
        ("kind,value\ndomain,com\n", "src/a.csv:2: domain value is not a plain host name"),
        (f"kind,value\nurl_sha256,{SHA},csam,extra\n", "src/a.csv:2: 4 fields, expected 2 (kind, value)"),
        ("", "src/a.csv: empty list"),
        ("kind,value,category\n# only comments\n", "src/a.csv: list file has no entries"),
    ],
)
def test_bad_lines_fail_naming_file_and_line(tmp_path, content, expected):
    write(tmp_path, "src/a.csv", content)
    with pytest.raises(BlocklistError) as error:
        blocklists.load(str(tmp_path))
    assert expected in str(error.value)


def test_txt_file_must_be_named_after_its_kind(tmp_path):
    write(tmp_path, "src/hashes.txt", f"{SHA}\n")
    with pytest.raises(BlocklistError, match=r"src/hashes.txt: file name must be <kind>.txt"):
        blocklists.load(str(tmp_path))


def test_txt_value_errors_name_the_line(tmp_path):
    write(tmp_path, "src/url_md5.txt", f"# header\n{MD5}\n{MD5}ff\n")
    with pytest.raises(BlocklistError, match=r"src/url_md5.txt:3: url_md5 value has 34 characters"):
        blocklists.load(str(tmp_path))


def test_empty_source_folder_and_missing_location_are_errors(tmp_path):
    (tmp_path / "lists" / "empty-source").mkdir(parents=True)
    with pytest.raises(BlocklistError, match="empty-source: source folder has no list files"):
        blocklists.load(str(tmp_path / "lists"))
    with pytest.raises(BlocklistError, match="does not exist"):
        blocklists.load(str(tmp_path / "missing"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(BlocklistError, match="no source folders"):
        blocklists.load(str(tmp_path / "bare"))


def test_parquet_list_errors_name_the_row(tmp_path):
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"kind": ["url_md5", "url_md5"], "value": [MD5, "xyz"]}), tmp_path / "src" / "l.parquet")
    with pytest.raises(BlocklistError, match=r"src/l.parquet: row 1: url_md5 value has 3 characters"):
        blocklists.load(str(tmp_path))
    write(tmp_path, "src/l.parquet", b"not parquet at all")
    with pytest.raises(BlocklistError, match=r"src/l.parquet: not a readable parquet file"):
        blocklists.load(str(tmp_path))


def test_written_list_is_found_again_by_its_version(tmp_path):
    write(tmp_path, "lists/src/a.csv", f"kind,value,category\nurl_sha256,{SHA},csam\n")
    merged = blocklists.load(str(tmp_path / "lists"))
    path = blocklists.write(merged, str(tmp_path / "work"))
    version, current = blocklists.read_current(str(tmp_path / "work"))
    assert (version, current) == (merged.version, path)
    assert pq.read_table(current).equals(merged.table)
    assert not list((tmp_path / "work").glob(".tmp-*")), "no temporary file left behind"


def test_list_version_digests_lines_batch_by_batch_as_one_text():
    """The version is the sha256 of the merged lines, one per entry: fed from Arrow buffers a batch at a time
    (flat memory for lists of millions of entries), it must equal the digest of the whole text, so versions of
    existing lists stay what they were."""
    lines = [f"url_sha256\t{i:064x}\tpartner-{i % 3}\tcsam" for i in range(2_500)] + ["pdq\tff\tp\tcsam\t31"]
    text = ("\n".join(lines) + "\n").encode()
    columns = list(zip(*(line.split("\t") for line in lines[:-1]), strict=True))
    table = pa.table(
        {
            "kind": [*columns[0], "pdq"],
            "value": [*columns[1], "ff"],
            "source": [*columns[2], "p"],
            "category": [*columns[3], "csam"],
            "distance": pa.array([None] * (len(lines) - 1) + [31], pa.int16()),
        },
        schema=blocklists.SCHEMA,
    )
    for size in (1, 7, 1 << 20):
        batches = table.to_batches(max_chunksize=size)
        assert blocklists._lines_digest(batches).hexdigest() == hashlib.sha256(text).hexdigest()
        assert blocklists._lines_digest(table.slice(3).to_batches(max_chunksize=size)).hexdigest() == (
            hashlib.sha256(("\n".join(lines[3:]) + "\n").encode()).hexdigest()
        )
    assert blocklists._lines_digest([]).hexdigest() == hashlib.sha256(b"").hexdigest()


def _mixed_lists(root):
    """Three sources (upper and lower case names), every text format, duplicates within and across files, pdq
    entries at two distances: what the merge's order and the version depend on."""
    sha = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(30)]
    md5 = [hashlib.md5(str(i).encode()).hexdigest() for i in range(20)]
    lines = "".join(f"url_sha256,{h},{'csam' if i % 2 else 'Privacy'}\n" for i, h in enumerate(sha))
    write(root, "Zeta/a.csv", f"kind,value,category\n{lines}domain,example.org,csam\npdq,{'f' * 64},csam\n")
    write(root, "alpha/url_md5.txt", "".join(f"{h}\n" for h in md5) + md5[3] + "\n")
    image = hashlib.md5(b"img").hexdigest()
    write(root, "alpha/b.tsv", f"kind\tvalue\nurl_sha256\t{sha[5]}\nimage_md5\t{image}\npdq\t{'0' * 63}1\n")
    duplicates = f"url_sha256,{sha[5]},csam\nurl_sha256,{sha[5]},a.b-c_d\npdq,{'0' * 63}1,csam\n"
    write(root, "Beta-2/c.csv", f"kind,value,category\n{duplicates}")
    write(root, "Beta-2/source.json", '{"pdq_distance": 20}')


def test_merged_list_is_sorted_by_bytes_and_its_version_is_stable(tmp_path, monkeypatch):
    """Entries come out distinct and in byte order of (kind, value, source, category, distance), however the
    files are cut into chunks, and the version is the one this list has always had (computed before DuckDB
    sorted the lists: Arrow's sort in memory gave the same order)."""
    _mixed_lists(tmp_path)
    merged = blocklists.load(str(tmp_path))
    table = merged.table.to_pylist()
    keys = [(r["kind"], r["value"], r["source"], r["category"], r["distance"]) for r in table]
    assert keys == sorted(set(keys), key=lambda k: tuple(str(v).encode() for v in k))
    assert (merged.version, merged.entries) == ("05fcfe1aedc635e6", 58)
    assert merged.kinds == {"domain": 1, "image_md5": 1, "pdq": 3, "url_md5": 20, "url_sha256": 33}
    assert merged.categories == {"Privacy": 15, "a.b-c_d": 1, "csam": 19, "unspecified": 23}
    assert merged.counts["Beta-2"] == {"pdq": 1, "url_sha256": 2}
    monkeypatch.setattr(blocklists, "CHUNK_LINES", 2)
    monkeypatch.setattr(blocklists, "DIGEST_ROWS", 5)
    again = blocklists.load(str(tmp_path))
    assert (again.version, again.table.to_pylist()) == (merged.version, table)


def test_errors_name_the_line_in_any_chunk_of_a_long_file(tmp_path, monkeypatch):
    """Files are parsed a chunk of lines at a time; line numbers, the header after blank lines and comments,
    and parquet row numbers still count from the start of the file."""
    monkeypatch.setattr(blocklists, "CHUNK_LINES", 3)
    good = "".join(f"url_sha256,{hashlib.sha256(str(i).encode()).hexdigest()}\n" for i in range(7))
    write(tmp_path, "src/a.csv", f"# list\n\n# of\n\nkind,value\n{good}url_sha256,{SHA[:-1]}\n")
    with pytest.raises(BlocklistError, match=r"src/a.csv:13: url_sha256 value has 63 characters"):
        blocklists.load(str(tmp_path))
    write(tmp_path, "src/a.csv", f"kind,value\n{good}url_sha256,{SHA},csam\n")
    with pytest.raises(BlocklistError, match=r"src/a.csv:9: 3 fields, expected 2"):
        blocklists.load(str(tmp_path))
    write(tmp_path, "src/a.csv", f"kind,value\n{good}")
    assert blocklists.load(str(tmp_path)).entries == 7
    (tmp_path / "src" / "a.csv").unlink()
    write(tmp_path, "src/url_md5.txt", f"{MD5}\n" * 8 + "x\n")
    with pytest.raises(BlocklistError, match=r"src/url_md5.txt:9: url_md5 value has 1 characters"):
        blocklists.load(str(tmp_path))
    (tmp_path / "src" / "url_md5.txt").unlink()
    pq.write_table(pa.table({"kind": ["url_md5"] * 8, "value": [MD5] * 7 + ["xyz"]}), tmp_path / "src" / "l.parquet")
    with pytest.raises(BlocklistError, match=r"src/l.parquet: row 7: url_md5 value has 3 characters"):
        blocklists.load(str(tmp_path))


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 64])
def test_a_file_read_a_few_bytes_at_a_time_gives_the_same_list_and_line_numbers(tmp_path, monkeypatch, read_bytes):
    """List files are read READ_BYTES at a time (never whole): a character cut between two reads, a BOM,
    "\r\n" and other line ends give the same entries, version and line numbers as the file read at once."""
    _mixed_lists(tmp_path)
    body = f"kind,value,category\r\n# caf\u00e9 \U0001f600\u2028url_md5,{MD5},x\rurl_sha256,{SHA2},c\n"
    write(tmp_path, "Other/d.csv", "\ufeff" + body + f"url_sha256,{SHA},c\n# \u00e9")  # 2- and 4-byte characters
    write(tmp_path, "Other/url_sha256.txt", f"{SHA}\r\n\r\n# \u00e9\u00e9\n{SHA2}".encode())
    whole = blocklists.load(str(tmp_path))
    monkeypatch.setattr(blocklists, "READ_BYTES", read_bytes)
    monkeypatch.setattr(blocklists, "CHUNK_LINES", 2)
    again = blocklists.load(str(tmp_path))
    assert (again.version, again.table.to_pylist()) == (whole.version, whole.table.to_pylist())
    assert ("url_md5", MD5, "Other", "x") in rows(again)

    bad = [
        (f"kind,value\n# \u00e9\u2028\nurl_sha256,{SHA}\rurl_md5,zz\n", "Other/d.csv:5: url_md5 value"),
        (f"kind,value\r\n\r\n# \U0001f600\r\nurl_sha256,{SHA[:-1]}\r\n", "Other/d.csv:4: url_sha256 value has 63"),
    ]
    for text, expected in bad:
        write(tmp_path, "Other/d.csv", text)
        with pytest.raises(BlocklistError, match=expected):
            blocklists.load(str(tmp_path))


@pytest.mark.parametrize("read_bytes", [1, 3, 8 << 20])
def test_bytes_that_are_not_utf8_are_named_by_line_and_offset_in_any_read(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(blocklists, "READ_BYTES", read_bytes)
    start = f"\ufeffkind,value,category\nurl_sha256,{SHA},csam # caf\u00e9\n".encode()
    for content, line, byte in [
        (start + b"url_md5," + MD5.encode() + b",\xe9t\xe9\n", 3, len(start) + 41),
        (start + b"url_md5," + MD5.encode() + b",\xc3", 3, len(start) + 41),  # a character cut by the file's end
        (b"\xef\xbb\xbfkind\xff", 1, 7),
    ]:
        write(tmp_path, "src/a.csv", content)
        assert content[byte] in (0xE9, 0xC3, 0xFF)
        with pytest.raises(BlocklistError) as error:
            blocklists.load(str(tmp_path))
        assert str(error.value) == (
            f"src/a.csv:{line}: not UTF-8 text (byte {byte} of the file is {content[byte]:#04x}):"
            " expected the list saved as UTF-8"
        )


def test_merge_leaves_no_scratch_files(tmp_path, monkeypatch):
    """The parsed files and the merged list are put aside in a scratch folder of their own, removed once the
    list is released or its load fails."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(blocklists.tempfile, "tempdir", str(tmp_path / "tmp"))
    _mixed_lists(tmp_path / "lists")
    merged = blocklists.load(str(tmp_path / "lists"))
    assert [p.name for p in (tmp_path / "tmp").glob("relaion-blocklist-*/*")] == ["merged.parquet"]
    del merged
    assert list((tmp_path / "tmp").glob("relaion-blocklist-*")) == []
    write(tmp_path, "lists/alpha/bad.csv", "kind,value\nurl_md5,zz\n")
    with pytest.raises(BlocklistError, match="bad.csv:2"):
        blocklists.load(str(tmp_path / "lists"))
    assert list((tmp_path / "tmp").glob("relaion-blocklist-*")) == []


def test_domain_entries_in_unicode_or_punycode_are_stored_in_their_idna_form(tmp_path):
    """A partner may write a host in Unicode (any case, fullwidth characters, a trailing dot) or in punycode:
    either is stored in the IDNA form (UTS #46), which rows with that host are matched in."""
    write(
        tmp_path,
        "optout/domains.csv",
        "kind,value\ndomain,Köln.Example.\ndomain,xn--MNCHEN-3ya.example\ndomain,ｓｔｒａßｅ．ｅｘａｍｐｌｅ\n"
        "domain,plain.example\n",
    )
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "domain.txt").write_text("bücher.example\n", encoding="utf-8")

    merged = blocklists.load(str(tmp_path))

    assert [value for kind, value, _, _ in rows(merged)] == [
        "plain.example",
        "xn--bcher-kva.example",
        "xn--kln-sna.example",
        "xn--mnchen-3ya.example",
        "xn--strae-oqa.example",
    ]
    assert blocklists.normalize_value("domain", "KÖLN.example", "f:1") == "xn--kln-sna.example"


def test_unicode_domain_entry_that_idna_disallows_fails_naming_file_and_line(tmp_path):
    write(tmp_path, "optout/domains.csv", "kind,value\ndomain,köln.example\ndomain,x\ufffd.example\n")
    with pytest.raises(BlocklistError, match=r"optout/domains.csv:3: domain value has a character that IDNA"):
        blocklists.load(str(tmp_path))
