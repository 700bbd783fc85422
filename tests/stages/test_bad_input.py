"""Bad input: a damaged or malformed shard, sidecar or partner list fails with one sentence that names the file,
the row or line, the column and what was expected; rows that can be set aside are kept and counted instead.
Inputs are never modified, and no message or statistic ever holds a row's URL or caption.

More partner-list cases (unknown kind, wrong hash length, non-hex, missing header, BOM, CRLF, empty file, empty
folder, unreadable parquet list) are in tests/lists/test_blocklists.py; an unreadable shard failing alone in a full
run is in tests/validation/test_failures.py.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import written

from assets.runner import run_all
from relaion_pipeline.core import shards
from relaion_pipeline.core.schemas import ShardSchemaError
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.lists.blocklists import BlocklistError
from relaion_pipeline.publishing import release
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks

BLOCKED = "blocked.example.org"
SECRET = "secret-page"  # in every URL of a row that must be removed; never in a message, statistic or output
SECRET_URL = f"http://{BLOCKED}/{SECRET}.jpg"
FINE_URL = "http://fine.example/a.jpg"
IMAGE = b"the bytes of a listed image"
SHA = hashlib.sha256(b"a.example.com/").hexdigest()


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "sidecars").mkdir()
    source = tmp_path / "lists" / "iwf"
    source.mkdir(parents=True)
    (source / "url_sha256.txt").write_text(hashlib.sha256(f"{BLOCKED}/".encode()).hexdigest() + "\n")
    (source / "image_md5.txt").write_text(hashlib.md5(IMAGE).hexdigest() + "\n")
    settings = Settings(
        shards=str(tmp_path / "shards"),
        blocklists=str(tmp_path / "lists"),
        sidecars=str(tmp_path / "sidecars"),
        work=str(tmp_path / "work"),
        release=str(tmp_path / "releases"),
        skip_image_matching=True,  # most shards here have no sidecar: their images are matched where one exists
    )
    pipeline.build_blocklist(settings)
    return settings


def relaion_table(urls, keys=None, captions=None, **columns) -> pa.Table:
    """A Re-LAION style shard: url, caption, key, punsafe."""
    n = len(urls)
    return pa.table(
        {
            "url": pa.array(urls, pa.string()),
            "caption": captions or [f"caption {i}" for i in range(n)],
            "key": keys or [f"k{i}" for i in range(n)],
            "punsafe": pa.array([0.1] * n, pa.float32()),
            **columns,
        }
    )


def write_shard(settings: Settings, name: str, table: pa.Table) -> str:
    path = Path(settings.shards) / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def write_sidecar(settings: Settings, name: str, table: pa.Table) -> str:
    path = Path(settings.sidecars) / f"{name}.parquet"
    pq.write_table(table, path)
    return str(path)


def non_utf8(values: list[bytes]) -> pa.Array:
    """A string column holding bytes that are not UTF-8, as a buggy writer can produce."""
    return pa.array(values, pa.binary()).view(pa.string())


def snapshot(*folders: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def fails(settings: Settings, name: str, error=shards.ShardError) -> str:
    """Run the removals stage on a bad shard: it must raise `error` in one sentence, leave the inputs as they
    were and publish no output for the shard. Returns the message."""
    before = snapshot(settings.shards, settings.sidecars, settings.blocklists)
    with pytest.raises(error) as raised:
        pipeline.compute_removals(settings, name)
    message = str(raised.value)
    assert "\n" not in message
    assert snapshot(settings.shards, settings.sidecars, settings.blocklists) == before, "inputs untouched"
    work = pipeline.Work(settings.work)
    assert not Path(work.removals(name)).exists() and not Path(work.stats("removals", name)).exists()
    return message


def run_variants(settings: Settings, name: str) -> tuple[dict, dict, dict]:
    return (
        pipeline.compute_removals(settings, name),
        pipeline.write_research(settings, name),
        pipeline.write_research_safe(settings, name),
    )


# Damaged files


def test_truncated_shard_fails_naming_the_file(settings):
    path = write_shard(settings, "part", relaion_table([FINE_URL, SECRET_URL]))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    assert fails(settings, "part") == (
        f"{path}: not a readable parquet file: the file starts as parquet but does not end with PAR1"
        " (truncated, or still being written)"
    )


def test_shard_that_is_not_parquet_fails_naming_the_file(settings):
    path = Path(settings.shards) / "part.parquet"
    path.write_text(f"url,caption\n{FINE_URL},a bicycle\n")
    assert fails(settings, "part") == (
        f"{path}: not a readable parquet file: expected a parquet file starting with PAR1, found other content"
    )


def test_empty_shard_file_fails_naming_the_file(settings):
    path = Path(settings.shards) / "part.parquet"
    path.write_bytes(b"")
    assert fails(settings, "part") == f"{path}: not a readable parquet file: the file is empty (0 bytes)"


def test_shard_whose_footer_points_past_its_end_fails_without_quoting_a_value(settings):
    path = write_shard(settings, "part", relaion_table([SECRET_URL] * 2000))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:4] + data[len(data) // 2 :])  # data pages gone, footer intact
    message = fails(settings, "part")
    assert message.startswith(f"{path}: not a readable parquet file: ")
    assert SECRET not in message


def test_shard_path_that_is_a_folder_fails_and_is_not_discovered(settings):
    folder = Path(settings.shards) / "x.parquet"
    folder.mkdir()
    write_shard(settings, "x.parquet/part-0", relaion_table([FINE_URL]))
    assert [s.name for s in shards.discover(settings.shards)] == ["x.parquet/part-0"]
    assert fails(settings, "x") == f"{folder}: is a folder, expected a parquet file"


# Schemas


def test_zero_row_shard_gives_empty_variants_with_its_schema(settings):
    table = relaion_table([FINE_URL]).slice(0, 0)
    path = write_shard(settings, "part", table)

    removals, research, safe = run_variants(settings, "part")

    assert (removals.rows_in, removals.rows_removed, removals.warnings) == (0, 0, [])
    assert (research.rows_in, research.rows_out, safe.rows_in, safe.rows_out) == (0, 0, 0, 0)
    for variant in (pipeline.RESEARCH, pipeline.RESEARCH_SAFE):
        output = pipeline.Work(settings.work).variant(variant, "part")
        assert pq.read_schema(output).equals(pq.read_schema(path), check_metadata=True)


def test_shard_without_url_column_fails_naming_its_columns(settings):
    path = write_shard(settings, "part", pa.table({"link": [SECRET_URL], "caption": ["a"], "key": ["k0"]}))
    assert fails(settings, "part", ShardSchemaError) == (
        f"{path}: no known schema family: expected a URL column ('URL' with 'TEXT', or 'url' with 'caption');"
        " found columns: link, caption, key"
    )


@pytest.mark.parametrize(
    "column, values, expected",
    [
        ("url", pa.array([1, 2], pa.int64()), "column 'url' (url) must hold strings, found int64"),
        (
            "url",
            pa.array([SECRET_URL.encode(), b"x"], pa.binary()),
            "column 'url' (url) must hold strings, found binary",
        ),
        ("punsafe", pa.array(["0.1", "0.9"]), "column 'punsafe' (punsafe) must be numeric, found string"),
        ("width", pa.array(["640", "n/a"]), "column 'width' (width) must be numeric, found string"),
        ("pwatermark", pa.array([True, False]), "column 'pwatermark' (pwatermark) must be numeric, found bool"),
    ],
)
def test_wrong_column_types_fail_naming_column_and_expected_type(settings, column, values, expected):
    table = relaion_table([FINE_URL, SECRET_URL])
    if column not in table.column_names:  # a column of the input rules only
        table = table.append_column(column, pa.array([1, 2], pa.int64()))
    path = write_shard(settings, "part", table.set_column(table.schema.get_field_index(column), column, values))
    assert fails(settings, "part", ShardSchemaError) == f"{path}: {expected}"


def test_schema_may_change_between_shards_and_each_keeps_its_own(settings):
    plain = relaion_table([FINE_URL, SECRET_URL])
    drifted = pa.table(
        {
            "aesthetic": [5.5, 6.1, 4.0],
            "key": ["d0", "d1", "d2"],
            "url": pa.array([SECRET_URL, FINE_URL, FINE_URL], pa.large_string()),
            "caption": pa.array(["a", "b", "c"], pa.large_string()),
            "punsafe": pa.array([0.1, 0.9, 0.2], pa.float64()),
        }
    ).replace_schema_metadata({"origin": "second crawl"})
    paths = {"laion/part-0": write_shard(settings, "laion/part-0", plain)}
    paths["laion/part-1"] = write_shard(settings, "laion/part-1", drifted)

    for name, path in paths.items():
        removals, research, safe = run_variants(settings, name)
        assert removals.rows_removed == 1
        for variant in (pipeline.RESEARCH, pipeline.RESEARCH_SAFE):
            output = pipeline.Work(settings.work).variant(variant, name)
            assert pq.read_schema(output).equals(pq.read_schema(path), check_metadata=True), (name, variant)
    assert research.rows_out == 2 and safe.rows_out == 1


# Row values


def test_urls_that_cannot_be_matched_are_kept_and_counted(settings):
    urls = [
        FINE_URL,  # 0
        None,  # 1: no URL
        "",  # 2: no URL
        "   ",  # 3: no URL
        f"ftp://{BLOCKED}/{SECRET}.jpg",  # 4: another scheme, matched on host and path like any URL
        f"mailto:someone@{BLOCKED}",  # 5: another scheme; the host after '@' is on the list
        "http://",  # 6: no host
        f"/{SECRET}/relative.jpg",  # 7: no host
        "http://fine.example/" + "x" * 100_000,  # 8: 100 KB, kept
        f"http://{BLOCKED}/" + "y" * 100_000,  # 9: 100 KB, removed
        SECRET_URL,  # 10
    ]
    path = write_shard(settings, "part", relaion_table(urls, captions=[f"secret caption {i}" for i in range(11)]))
    before = snapshot(settings.shards)

    removals, research, safe = run_variants(settings, "part")

    assert {
        k: getattr(removals, k) for k in ("rows_in", "rows_without_url", "rows_unusable_url", "rows_other_scheme")
    } == {
        "rows_in": 11,
        "rows_without_url": 3,
        "rows_unusable_url": 2,
        "rows_other_scheme": 2,
    }
    assert removals.rows_removed == 4
    removed = pq.read_table(pipeline.Work(settings.work).removals("part"))
    assert sorted(set(removed.column("row_number").to_pylist())) == [4, 5, 9, 10]
    assert (research.rows_out, safe.rows_out) == (7, 7), "set-aside rows are kept, not dropped"
    assert removals.warnings == [
        f"{path}: 2 of 11 rows have a URL with no host in column 'url' (rows 6, 7);"
        " they are kept and cannot match a URL list"
    ]
    text = json.dumps(removals.as_dict()) + json.dumps(removed.to_pylist())
    assert not [word for word in (SECRET, "someone", "fine.example", "secret caption") if word in text]
    assert snapshot(settings.shards) == before


def test_url_that_is_not_utf8_fails_naming_row_and_column_not_the_value(settings):
    urls = non_utf8([FINE_URL.encode(), f"http://{BLOCKED}/{SECRET}\xff.jpg".encode("latin-1")])
    path = write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL]).set_column(0, "url", urls))
    message = fails(settings, "part")
    assert message == f"{path}: row 1, column 'url': text is not valid UTF-8, expected UTF-8 strings"
    assert SECRET not in message and BLOCKED not in message


def test_caption_that_is_not_utf8_fails_naming_row_and_column(settings):
    captions = non_utf8([b"a bicycle", b"a lighthouse", "secret caption \xe9t\xe9".encode("latin-1")])
    table = relaion_table([FINE_URL] * 3)
    path = write_shard(settings, "part", table.set_column(1, "caption", captions))
    message = fails(settings, "part")
    assert message == f"{path}: row 2, column 'caption': text is not valid UTF-8, expected UTF-8 strings"
    assert "secret caption" not in message


def test_duplicate_row_keys_are_counted_warned_and_hold_the_shard_back(settings):
    """Decision: a repeated key does not stop matching (rows are removed by row number), but it is counted and
    warned about in the removals statistics, and the blocking input check holds the shard back."""
    path = write_shard(settings, "part", relaion_table([SECRET_URL, FINE_URL, FINE_URL], keys=["a", "a", "b"]))

    removals, research, _ = run_variants(settings, "part")

    assert removals.duplicate_row_keys == 1
    assert removals.warnings == [
        f"{path}: 1 of 3 rows repeat the row key of another row in column 'key' (e.g. {written(path, ['a'])[0]!r}),"
        " expected unique keys;"
        " each row is matched on its own, by row number"
    ]
    assert (removals.rows_removed, research.rows_out) == (1, 2)
    outcome = checks.check_input(settings, "part")[0]
    assert not outcome.success


def test_input_check_counts_are_remembered_until_the_shard_changes(settings, monkeypatch):
    """The input check runs with every removals run; its counts (and sample keys) and the shard's digest are
    made once per shard file, validated by Great Expectations each time, and made again when the file
    changes."""
    import os

    from relaion_pipeline.match import matching

    path = write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL, FINE_URL], keys=["a", "a", "b"]))
    first = checks.check_input(settings, "part")[0]
    shown = written(path, ["a"])
    assert [(f.column, f.observed, f.sample_row_keys) for f in first.failures] == [("duplicate_row_keys", 1, shown)]
    connected = []
    original = matching.connect
    monkeypatch.setattr(matching, "connect", lambda *a, **k: connected.append(1) or original(*a, **k))
    again = checks.check_input(settings, "part")[0]
    assert connected == [] and [(f.column, f.observed) for f in again.failures] == [("duplicate_row_keys", 1)]
    assert again.failures[0].sample_row_keys == shown
    record = pipeline.Work(settings.work).validation(checks.INPUT_WELL_FORMED, "part")
    digest = json.loads(Path(record).read_text())["validated_sha256"]
    assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL, FINE_URL], keys=["a", "b", "c"]))
    os.utime(path, (1, 1))
    assert checks.check_input(settings, "part")[0].success and connected == [1]
    validated = json.loads(Path(record).read_text())
    assert validated["validated_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest(), "the new file's"
    assert validated["validated_fingerprint"] == pipeline.fingerprint(str(path))


def test_removals_counts_for_the_input_check_in_its_own_pass_exactly_as_the_check_would(settings, monkeypatch):
    """A first removals run counts the shard once for itself and for the input check: the check then finds
    the same counts and sample keys as its own pass makes, and validates them without reading the shard."""
    from relaion_pipeline.core import cache
    from relaion_pipeline.match import matching

    table = relaion_table(
        [FINE_URL, " ", "http://x.example/" + "a" * 4100, FINE_URL, None],
        keys=["a", "b", "c", "a", "d"],
        punsafe=pa.array([0.1, 1.5, -0.2, 0.3, None], pa.float32()),
    )
    write_shard(settings, "part", table)
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, "part")
    record = cache.record_path(settings.work, "part", cache.INPUT_COUNTS)
    made_by_removals = json.loads(Path(record).read_text())
    connected = []
    original = matching.connect
    monkeypatch.setattr(matching, "connect", lambda *a, **k: connected.append(1) or original(*a, **k))
    outcome = checks.check_input(settings, "part")[0]
    assert connected == [], "no pass of its own"
    Path(record).unlink()
    own = checks.check_input(settings, "part")[0]
    assert connected == [1] and json.loads(Path(record).read_text()) == made_by_removals
    failed = {f.column: (f.observed, f.sample_row_keys) for f in outcome.failures}
    assert failed == {f.column: (f.observed, f.sample_row_keys) for f in own.failures}
    shown = dict(zip("abcd", written(Path(settings.shards) / "part.parquet", "abcd"), strict=True))
    assert failed == {
        "url_missing": (2, [shown["b"], shown["d"]]),
        "url_too_long": (1, [shown["c"]]),
        "punsafe_out_of_range": (2, [shown["b"], shown["c"]]),
        "duplicate_row_keys": (1, [shown["a"]]),
    }


# Sidecars


def test_sidecar_whose_keys_match_no_row_fails_naming_it(settings):
    write_shard(settings, "part", pa.table({"URL": [SECRET_URL, FINE_URL], "TEXT": ["a", "b"]}))  # keys part:<n>
    md5 = hashlib.md5(IMAGE).hexdigest()
    sidecar = write_sidecar(settings, "part", pa.table({"key": ["0", "1"], "md5": [md5, md5]}))
    assert fails(settings, "part") == (
        f"{sidecar}: none of the 2 keys of this image-hash sidecar is a row key of shard 'part',"
        " expected '<shard>:<row number>' such as 'part:0'"
    )


def test_sidecar_keys_that_match_no_row_are_counted(settings):
    write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL]))
    md5 = hashlib.md5(IMAGE).hexdigest()
    sidecar = write_sidecar(settings, "part", pa.table({"key": ["k1", "stranger"], "md5": [md5, md5]}))

    removals = pipeline.compute_removals(settings, "part")

    assert (removals.sidecar_rows, removals.sidecar_unmatched_keys) == (2, 1)
    assert removals.removed_by_kind == {"image_md5": 1}
    assert removals.warnings == [f"{sidecar}: 1 of 2 sidecar keys are not row keys of the shard"]


def test_sidecar_keys_of_a_shard_with_integer_row_keys_match_only_their_exact_text(settings):
    """Row keys are their text: with an integer key column, the sidecar's '7' is row 7's key, but '07',
    '+7', ' 7', '7.0' and a number beyond 64 bits are keys of no row."""
    table = relaion_table([FINE_URL] * 3).set_column(2, "key", pa.array([7, -3, 2**62], pa.int64()))
    write_shard(settings, "part", table)
    md5 = hashlib.md5(IMAGE).hexdigest()
    keys = ["7", "-3", str(2**62), "07", "+7", " 7", "7.0", "x", None, "9" * 25]
    write_sidecar(settings, "part", pa.table({"key": keys, "md5": [md5] * len(keys)}))

    removals = pipeline.compute_removals(settings, "part")

    assert (removals.sidecar_rows, removals.sidecar_unmatched_keys) == (10, 7)
    assert removals.removed_by_kind == {"image_md5": 3}


def test_sidecar_counts_are_remembered_until_the_shard_or_sidecar_changes(settings, monkeypatch):
    """A new list version leaves a sidecar's counts as they were: they are counted once per shard and sidecar
    file, and again when either file changes."""
    import os

    from relaion_pipeline.match import matching

    write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL]))
    md5 = hashlib.md5(IMAGE).hexdigest()
    sidecar = write_sidecar(settings, "part", pa.table({"key": ["k1", "stranger"], "md5": [md5, md5]}))
    first = pipeline.compute_removals(settings, "part")
    counted = []
    original = matching.sidecar_counts_sql
    monkeypatch.setattr(matching, "sidecar_counts_sql", lambda inputs: counted.append(1) or original(inputs))
    again = pipeline.compute_removals(settings, "part")
    assert counted == [] and again.warnings == first.warnings and again.sidecar_rows == 2
    write_sidecar(settings, "part", pa.table({"key": ["k0", "k1", "x", "y"], "md5": [md5] * 4}))
    os.utime(sidecar, (1, 1))  # another file, whatever the clock's resolution
    changed = pipeline.compute_removals(settings, "part")
    assert counted == [1]
    assert (changed.sidecar_rows, changed.sidecar_unmatched_keys) == (4, 2)


def test_sidecar_without_key_column_fails_naming_it(settings):
    write_shard(settings, "part", relaion_table([FINE_URL]))
    sidecar = write_sidecar(settings, "part", pa.table({"row": ["k0"], "md5": [hashlib.md5(IMAGE).hexdigest()]}))
    assert fails(settings, "part") == (
        f"{sidecar}: image-hash sidecar has no 'key' column (expected key plus md5/sha1/sha256/pdq)"
    )


def test_sidecar_hash_column_of_wrong_type_fails_naming_column(settings):
    write_shard(settings, "part", relaion_table([FINE_URL]))
    sidecar = write_sidecar(settings, "part", pa.table({"key": ["k0"], "md5": [hashlib.md5(IMAGE).digest()]}))
    assert fails(settings, "part") == (
        f"{sidecar}: column 'md5' of the image-hash sidecar must hold hex strings, found binary"
    )


# Shard names


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "./x", "a//b", ""])
def test_shard_names_that_escape_the_location_are_rejected(settings, name):
    expected = (
        f"{name!r}: not a shard name under {settings.shards}: expected a relative path without '.', '..' or"
        " empty parts, such as 'part-00000'"
    )
    with pytest.raises(shards.ShardError) as raised:
        shards.resolve(settings.shards, name)
    assert str(raised.value) == expected
    with pytest.raises(shards.ShardError, match="not a shard name"):
        pipeline.compute_removals(settings, name)
    assert not (Path(settings.shards).parent / "x.parquet").exists()


def test_spaces_and_unicode_in_shard_names_run_end_to_end_and_a_bad_shard_fails_alone(settings, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(Path(settings.work).parent / "unused"))
    good = write_shard(settings, "a b/ü", relaion_table([FINE_URL, SECRET_URL], keys=["u0", "u1"]))
    urls = non_utf8([FINE_URL.encode(), f"http://{BLOCKED}/{SECRET}\xff".encode("latin-1")])
    bad = write_shard(settings, "bad utf8", relaion_table([FINE_URL, FINE_URL]).set_column(0, "url", urls))
    before = snapshot(settings.shards)

    summary = run_all(settings, progress=lambda line: None)

    by_name = {s.name: s for s in summary.shards}
    assert by_name["a b/ü"].ok and (by_name["a b/ü"].rows_in, by_name["a b/ü"].rows_research) == (2, 1)
    assert by_name["bad utf8"].error == (
        f"{bad}: row 1, column 'url': text is not valid UTF-8, expected UTF-8 strings"
    ), "the message alone, without the error's class"
    manifest, problems = release.verify(settings.release)
    assert problems == [] and list(manifest["shards"]) == ["a b/ü"] and "bad utf8" in manifest["held_back"]
    published = Path(release.resolve(settings.release)) / "research" / "a b" / "ü.parquet"
    assert pq.read_schema(published).equals(pq.read_schema(good), check_metadata=True)
    assert snapshot(settings.shards) == before, "inputs untouched"
    work_files = [p for p in Path(settings.work).rglob("*") if p.is_file()]
    assert not [p for p in work_files if SECRET.encode() in p.read_bytes()], "no URL in logs, stats or outputs"


# Partner lists (the rest are in tests/lists/test_blocklists.py)


def write_list(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def list_error(root: Path) -> str:
    before = snapshot(str(root))
    with pytest.raises(BlocklistError) as raised:
        blocklists.load(str(root))
    assert snapshot(str(root)) == before
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_latin1_list_fails_naming_file_line_and_byte(tmp_path):
    content = f"kind,value,category\nurl_sha256,{SHA},catégorie\n".encode("latin-1")
    write_list(tmp_path, "src/a.csv", content)
    offset = content.index(b"\xe9")
    assert list_error(tmp_path) == (
        f"src/a.csv:2: not UTF-8 text (byte {offset} of the file is 0xe9): expected the list saved as UTF-8"
    )


def test_header_with_an_extra_column_fails_naming_the_header(tmp_path):
    write_list(tmp_path, "src/a.csv", f"kind,value,category,extra\nurl_sha256,{SHA},csam,x\n")
    assert list_error(tmp_path) == (
        "src/a.csv:1: header is 'kind,value,category,extra', expected 'kind,value[,category]'"
    )


def test_space_inside_a_txt_value_fails_naming_the_line(tmp_path):
    write_list(tmp_path, "src/url_sha256.txt", f"{SHA}\n{SHA[:32]} {SHA[32:]}\n")
    assert list_error(tmp_path) == (
        "src/url_sha256.txt:2: url_sha256 value contains whitespace, expected one value of 64 hex digits"
    )


def test_old_mac_line_ends_are_numbered_like_an_editor_does(tmp_path):
    write_list(tmp_path, "src/a.csv", f"kind,value\rurl_sha256,{SHA}\r\rurl_md5,xyz\r")
    assert list_error(tmp_path) == "src/a.csv:4: url_md5 value has 3 characters, expected 32 hex digits"


def test_first_bad_line_of_a_mixed_list_is_the_one_reported(tmp_path):
    write_list(
        tmp_path,
        "src/a.csv",
        f"kind,value,category\nurl_sha256,{SHA},csam\ndomain,Opt-Out.example.,opt-out\n"
        f"url_md5,{SHA},csam\nurl_sha1,{SHA},csam\nurl_sha256,{SHA},csam,extra\n",
    )
    assert list_error(tmp_path) == "src/a.csv:4: url_md5 value has 64 characters, expected 32 hex digits"


def test_quoted_csv_fields_are_read_and_a_bad_quoted_category_is_named(tmp_path):
    write_list(tmp_path, "src/a.csv", f'"kind","value","category"\n"url_sha256"," {SHA.upper()} ","csam"\n')
    merged = blocklists.load(str(tmp_path))
    assert merged.table.to_pylist() == [
        {"kind": "url_sha256", "value": SHA, "source": "src", "category": "csam", "distance": None}
    ]
    write_list(tmp_path, "src/a.csv", f'kind,value,category\nurl_sha256,{SHA},"csam,privacy"\n')
    assert list_error(tmp_path) == "src/a.csv:2: category 'csam,privacy' must be letters, digits, '-', '_' or '.'"


def test_parquet_list_with_binary_values_fails_naming_the_column(tmp_path):
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"kind": ["url_md5"], "value": [b"\x01" * 16]}), tmp_path / "src" / "l.parquet")
    assert list_error(tmp_path) == "src/l.parquet: column 'value' must hold strings, found binary"


def test_two_million_entries_with_windows_line_ends_load_sorted_and_merged(tmp_path):
    """Two million CRLF lines, ten repeated: every entry loaded once, sorted (the time is in BENCHMARKS.md)."""
    entries = 2_000_000
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    lines = np.empty((entries, 66), np.uint8)
    lines[:, :64] = digits[np.random.default_rng(0).integers(0, 16, size=(entries, 64), dtype=np.uint8)]
    lines[:, 64:] = np.frombuffer(b"\r\n", np.uint8)  # CRLF line ends, as lists exported on Windows have
    write_list(tmp_path, "iwf/url_sha256.txt", b"# partner list\r\n" + lines.tobytes() + lines[:10].tobytes())

    merged = blocklists.load(str(tmp_path))

    assert merged.entries == entries, "ten repeated lines are merged"
    assert merged.counts == {"iwf": {"url_sha256": entries}}
    values = merged.table.column("value")
    assert pc.all(pc.less(values[:-1], values[1:])).as_py(), "sorted and distinct"


# Column encodings and names that are valid, or unreadable, however a writer chose to store them


def test_dictionary_encoded_url_caption_and_key_columns_are_matched_and_kept_as_they_are(settings):
    plain = relaion_table([FINE_URL, SECRET_URL, FINE_URL], captions=["a", "b", "a"], keys=["d0", "d1", "d2"])
    encoded = {name: plain.column(name).dictionary_encode() for name in ("url", "caption", "key")}
    table = pa.table({name: encoded.get(name, plain.column(name)) for name in plain.column_names})
    path = write_shard(settings, "part", table)
    assert pa.types.is_dictionary(pq.read_schema(path).field("url").type)

    removals, research, safe = run_variants(settings, "part")

    assert (removals.rows_removed, research.rows_out, safe.rows_out) == (1, 2, 2)
    removed = pq.read_table(pipeline.Work(settings.work).removals("part")).to_pylist()
    assert [(r["row_key"], r["kind"]) for r in removed] == [(written(path, ["d1"])[0], "url_sha256")]
    for variant in (pipeline.RESEARCH, pipeline.RESEARCH_SAFE):
        output = pipeline.Work(settings.work).variant(variant, "part")
        assert pq.read_schema(output).equals(pq.read_schema(path), check_metadata=True), variant
        assert pq.read_table(output).column("key").to_pylist() == ["d0", "d2"]
    assert all(outcome.success for outcome in checks.check_research(settings, "part"))


def test_dictionary_encoded_columns_of_a_parquet_list_are_read_as_strings(tmp_path):
    (tmp_path / "src").mkdir()
    columns = {"kind": ["url_sha256", "url_sha256"], "value": [SHA, SHA.upper()], "category": ["csam", "csam"]}
    table = pa.table({name: pa.array(values).dictionary_encode() for name, values in columns.items()})
    pq.write_table(table, tmp_path / "src" / "l.parquet")

    merged = blocklists.load(str(tmp_path))

    assert merged.table.to_pylist() == [
        {"kind": "url_sha256", "value": SHA, "source": "src", "category": "csam", "distance": None}
    ]


@pytest.mark.parametrize("column", ["url", "punsafe", "aesthetic"])
def test_a_column_name_used_twice_fails_naming_the_file_and_the_column(settings, column):
    table = relaion_table([FINE_URL, SECRET_URL]).append_column("aesthetic", pa.array([5.0, 6.0]))
    twice = pa.Table.from_arrays([*table.columns, table.column(column)], names=[*table.column_names, column])
    path = write_shard(settings, "part", twice)
    assert fails(settings, "part", ShardSchemaError) == (
        f"{path}: column {column!r} appears 2 times; expected each column name once"
    )


def test_a_null_typed_punsafe_column_is_read_as_scores_that_are_all_missing(settings):
    table = relaion_table([FINE_URL, SECRET_URL, FINE_URL])
    table = table.set_column(table.schema.get_field_index("punsafe"), "punsafe", pa.nulls(3))
    path = write_shard(settings, "part", table)
    assert pa.types.is_null(pq.read_schema(path).field("punsafe").type)

    removals, research, safe = run_variants(settings, "part")

    assert (removals.rows_removed, research.rows_out, safe.rows_out) == (1, 2, 2)
    for variant in (pipeline.RESEARCH, pipeline.RESEARCH_SAFE):
        output = pipeline.Work(settings.work).variant(variant, "part")
        assert pq.read_schema(output).equals(pq.read_schema(path), check_metadata=True), variant
        assert pq.read_table(output).column("key").to_pylist() == ["k0", "k2"]
    assert checks.check_input(settings, "part")[0].success
    assert all(outcome.success for outcome in checks.check_research_safe(settings, "part"))
    dropped = pipeline.write_research_safe(settings.with_(missing_score="drop"), "part")
    assert dropped.rows_out == 0


def test_dictionary_encoded_sidecar_columns_are_matched(settings):
    write_shard(settings, "part", relaion_table([FINE_URL, FINE_URL, FINE_URL]))
    md5 = hashlib.md5(IMAGE).hexdigest()
    table = pa.table({"key": ["k0", "k1", "k2"], "md5": [md5, "0" * 32, md5]})
    write_sidecar(settings, "part", pa.table({n: table.column(n).dictionary_encode() for n in table.column_names}))

    removals, research, _ = run_variants(settings, "part")

    assert removals.removed_by_kind == {"image_md5": 2}
    assert pq.read_table(pipeline.Work(settings.work).variant("research", "part")).column("key").to_pylist() == ["k1"]


def test_a_sidecar_column_name_used_twice_fails_naming_the_file_and_the_column(settings):
    write_shard(settings, "part", relaion_table([FINE_URL]))
    md5 = hashlib.md5(IMAGE).hexdigest()
    sidecar = write_sidecar(settings, "part", pa.Table.from_arrays([pa.array(["k0"]), pa.array([md5])] * 2,
                                                                   names=["key", "md5", "key", "md5"]))  # fmt: skip
    assert fails(settings, "part", ShardSchemaError) == (
        f"{sidecar}: column 'key' appears 2 times; expected each column name once"
    )


# Symbolic links under the shard location


def test_a_symlinked_folder_under_the_shard_location_is_discovered_and_matched(settings, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "crawl-2"
    elsewhere.mkdir(parents=True)
    pq.write_table(relaion_table([FINE_URL, SECRET_URL]), elsewhere / "part-0.parquet")
    (Path(settings.shards) / "crawl-2").symlink_to(elsewhere, target_is_directory=True)
    write_shard(settings, "crawl-1/part-0", relaion_table([FINE_URL]))

    found = shards.discover(settings.shards)

    assert [(s.name, s.path) for s in found] == [
        ("crawl-1/part-0", f"{settings.shards}/crawl-1/part-0.parquet"),
        ("crawl-2/part-0", f"{settings.shards}/crawl-2/part-0.parquet"),
    ]
    removals, research, _ = run_variants(settings, "crawl-2/part-0")
    assert (removals.rows_removed, research.rows_out) == (1, 1)


def test_a_symlink_loop_under_the_shard_location_fails_naming_the_link(settings):
    write_shard(settings, "crawl/part-0", relaion_table([FINE_URL]))
    loop = Path(settings.shards) / "crawl" / "again"
    loop.symlink_to(Path(settings.shards), target_is_directory=True)
    with pytest.raises(shards.ShardError) as raised:
        shards.discover(settings.shards)
    assert str(raised.value) == (
        f"{loop}: a symbolic link to a folder above it under the shard location (a loop); expected links to"
        " folders outside their own path: remove or replace it"
    )
