"""Published variants are drop-in replacements: same columns, types, metadata and row order as the input."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.core import schemas
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.stages import variants

ROWS = 150_000  # more than two read batches
NONE = np.zeros(0, np.int64)  # no removed rows: research is the shard


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "URL": [f"http://h{i % 97}.example/{i}.jpg" for i in range(ROWS)],
            "TEXT": [f"caption {i}" for i in range(ROWS)],
            "WIDTH": pd.array(rng.integers(1, 4000, ROWS), dtype="Int32"),
            "HEIGHT": rng.integers(1, 4000, ROWS).astype("float64"),
            "punsafe": rng.random(ROWS).astype("float32"),
            "LANGUAGE": pd.Categorical(rng.choice(["en", "de", "fr"], ROWS)),
        },
        index=pd.RangeIndex(1000, 1000 + ROWS),
    )
    frame.loc[frame.index[5], "punsafe"] = np.nan
    path = tmp_path / "in.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=True)
    pq.write_table(table, path, row_group_size=40_000)
    return path, table


def test_research_keeps_schema_metadata_and_order_and_drops_exactly_the_removed_rows(shard, tmp_path):
    path, _ = shard
    table = pq.read_table(path)  # the input as any reader sees it
    removed = np.array([0, 5, 65_535, 65_536, 149_999, 65_536])
    stats = variants.write_research(str(path), removed, str(tmp_path / "out" / "research.parquet"))

    out = pq.read_table(tmp_path / "out" / "research.parquet")
    assert out.schema.equals(table.schema, check_metadata=True)
    keep = np.ones(ROWS, dtype=bool)
    keep[removed] = False
    assert out.equals(table.filter(pa.array(keep)))
    assert (stats.rows_in, stats.rows_out) == (ROWS, ROWS - 5)
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "research.parquet"], "no temporary file left"


def test_research_safe_drops_scores_above_threshold_and_keeps_missing_by_default(shard, tmp_path):
    path, table = shard
    roles = schemas.detect(table.schema, str(path))
    out_path = tmp_path / "safe.parquet"
    variants.write_research_safe(str(path), NONE, roles, Settings(), str(out_path))
    out = pq.read_table(out_path)
    punsafe = out.column("punsafe").to_numpy(zero_copy_only=False)
    assert np.nanmax(punsafe) <= 0.45
    expected = sum(1 for v in table.column("punsafe").to_pylist() if v is None or v <= 0.45)
    assert out.num_rows == expected
    assert out.column("punsafe").null_count == 1

    variants.write_research_safe(str(path), NONE, roles, Settings(missing_score="drop"), str(out_path))
    assert pq.read_table(out_path).num_rows == expected - 1


def test_research_safe_uses_nsfw_tag_when_there_is_no_score(tmp_path):
    table = pa.table(
        {"SAMPLE_ID": [1, 2, 3, 4], "URL": ["u"] * 4, "TEXT": ["t"] * 4, "NSFW": ["UNLIKELY", "NSFW", "UNSURE", None]}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    roles = schemas.detect(table.schema, "p")
    variants.write_research_safe(str(tmp_path / "p.parquet"), NONE, roles, Settings(), str(tmp_path / "s.parquet"))
    assert pq.read_table(tmp_path / "s.parquet").column("SAMPLE_ID").to_pylist() == [1, 3, 4]
    strict = Settings(unsafe_tags="NSFW,UNSURE", missing_score="drop")
    variants.write_research_safe(str(tmp_path / "p.parquet"), NONE, roles, strict, str(tmp_path / "s.parquet"))
    assert pq.read_table(tmp_path / "s.parquet").column("SAMPLE_ID").to_pylist() == [1]


def test_removing_every_row_still_writes_a_valid_empty_shard(tmp_path):
    table = pa.table({"URL": ["a", "b"], "TEXT": ["x", "y"]})
    pq.write_table(table, tmp_path / "m.parquet")
    stats = variants.write_research(str(tmp_path / "m.parquet"), np.array([0, 1]), str(tmp_path / "r.parquet"))
    out = pq.read_table(tmp_path / "r.parquet")
    assert out.num_rows == 0 and out.schema.equals(table.schema)
    assert stats.rows_out == 0 and len(stats.sha256) == 64


def test_a_variant_is_recognized_as_its_source_minus_the_dropped_rows_by_streaming_both(shard, tmp_path, monkeypatch):
    """The subset checks stream a variant beside its source: the research file is exactly the input minus the
    removed positions, in order, across read batches; a changed, added, reordered or kept row is not."""
    monkeypatch.setattr(variants, "COMPARE_ROWS", 25_000)  # batches of the two files cut at different rows
    path, table = shard
    removed = np.array([0, 5, 65_535, 65_536, 149_999])
    research = tmp_path / "research.parquet"
    variants.write_research(str(path), removed, str(research))
    columns = ["URL", "TEXT"]
    assert variants.is_filtered_copy(str(research), str(path), columns, removed)
    with_nan = tmp_path / "with-nan.parquet"
    variants.write_research(str(path), removed[removed != 5], str(with_nan))  # row 5's punsafe is NaN (null)
    assert variants.is_filtered_copy(str(with_nan), str(path), ["punsafe"], removed[removed != 5])
    assert not variants.is_filtered_copy(str(research), str(path), columns, removed[:-1]), "a removed row is missing"
    assert not variants.is_filtered_copy(str(research), str(path), columns, np.append(removed, 7)), "one row too many"
    kept = pq.read_table(research)

    def tampered(change) -> str:
        out = tmp_path / "tampered.parquet"
        pq.write_table(change(kept), out, row_group_size=30_000)
        return str(out)

    texts = kept.column("TEXT").to_pylist()
    changed = tampered(lambda t: t.set_column(1, "TEXT", pa.array(texts[:90_000] + ["other"] + texts[90_001:])))
    assert not variants.is_filtered_copy(changed, str(path), columns, removed)
    swapped = tampered(lambda t: t.take(np.r_[1, 0, 2 : t.num_rows]))
    assert not variants.is_filtered_copy(swapped, str(path), columns, removed)
    extra = tampered(lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    assert not variants.is_filtered_copy(extra, str(path), columns, removed)
    retyped = tampered(lambda t: t.set_column(1, "TEXT", pa.array(range(t.num_rows))))
    assert not variants.is_filtered_copy(retyped, str(path), columns, removed), "another type is no copy"
    empty = tampered(lambda t: t.slice(0, 0))
    assert variants.is_filtered_copy(empty, str(path), columns, np.arange(ROWS))
    assert not variants.is_filtered_copy(empty, str(path), columns, removed)


@pytest.mark.parametrize("rule", [Settings(), Settings(missing_score="drop", safe_threshold=0.2)])
def test_research_safe_written_in_researchs_pass_is_byte_for_byte_the_one_written_alone(
    shard, tmp_path, monkeypatch, rule
):
    """research's pass writes research-safe too: research's rows whose score passes the rule, the same bytes
    as research-safe written alone from the shard (the same batches, row groups cut at exact row counts
    inside them), and the shard's row numbers of the unsafe rows it leaves out."""
    monkeypatch.setattr(variants, "ROW_GROUP_ROWS", 50_000)  # several row groups of several pages each
    monkeypatch.setattr(variants, "BATCH_ROWS", 30_000)
    path, table = shard
    roles = schemas.detect(table.schema, str(path))
    removed = np.array([0, 5, 65_535, 65_536, 149_999])
    safe_path = tmp_path / "s.parquet"
    research, safe, unsafe = variants.write_research(
        str(path), removed, str(tmp_path / "r.parquet"), (roles, rule, str(safe_path))
    )
    alone, alone_unsafe = variants.write_research_safe(str(path), removed, roles, rule, str(tmp_path / "s2.parquet"))

    assert safe == alone and safe_path.read_bytes() == (tmp_path / "s2.parquet").read_bytes()
    for stats, written in ((research, tmp_path / "r.parquet"), (safe, safe_path)):
        data = written.read_bytes()
        assert (stats.bytes, stats.sha256) == (len(data), hashlib.sha256(data).hexdigest()), "digested on the way"
    assert unsafe.tolist() == alone_unsafe.tolist()
    assert pq.ParquetFile(safe_path).metadata.num_row_groups == -(-safe.rows_out // 50_000)
    kept = pq.read_table(tmp_path / "r.parquet")
    scores = kept.column("punsafe").to_pylist()
    passes = [v <= rule.safe_threshold if v is not None else rule.missing_score == "keep" for v in scores]
    assert pq.read_table(safe_path).equals(kept.filter(pa.array(passes)))
    survivors = np.setdiff1d(np.arange(ROWS), removed)
    assert unsafe.tolist() == survivors[~np.array(passes)].tolist() and research.rows_out == len(survivors)


_HELD: list[int] = []


def _held(path: str, folder: Path) -> int:
    """The inode of the file at `path`, kept from reuse by a descriptor held open (a hard link would change
    the file's change time, and the cache would rightly take it for another file)."""
    _HELD.append(os.open(path, os.O_RDONLY))
    return os.fstat(_HELD[-1]).st_ino


@pytest.fixture(autouse=True)
def _release_held():
    yield
    while _HELD:
        os.close(_HELD.pop())


@pytest.fixture
def matched(tmp_path):
    """A generated shard matched against its lists: (settings, shard name, work folders)."""
    from relaion_pipeline.demo_data import demo
    from relaion_pipeline.stages import pipeline

    demo.generate(tmp_path / "in", shards=1, rows=3_000, seed=3)
    settings = Settings.layout(tmp_path / "in", tmp_path / "out")
    name = "joined/part-00000"
    pipeline.build_blocklist(settings)
    pipeline.compute_removals(settings, name)
    return settings, name, pipeline.Work(settings.work)


def test_the_research_safe_stage_publishes_the_staged_copy_only_while_research_and_its_rule_hold(matched, tmp_path):
    from relaion_pipeline.stages import pipeline

    settings, name, work = matched

    def research_safe(settings: Settings, staged: bool) -> tuple[bytes, bytes, dict]:
        pipeline.write_research(settings, name)
        inode = _held(work.staged_safe(name)[0], tmp_path)
        if not staged:  # research-safe written alone, from the shard
            Path(work.staged_safe(name)[2]).unlink()
        stats = pipeline.write_research_safe(settings, name)
        assert not any(Path(p).exists() for p in work.staged_safe(name)), "a staged copy is used once"
        variant, unsafe = Path(work.variant("research-safe", name)), Path(work.unsafe_rows(name))
        assert (variant.stat().st_ino == inode) == staged, "the staged file itself is published, renamed"
        return variant.read_bytes(), unsafe.read_bytes(), {k: v for k, v in stats.as_dict().items() if k != "seconds"}

    assert research_safe(settings, staged=True) == research_safe(settings, staged=False)
    stricter = settings.with_(safe_threshold=0.1)  # the rule changed after research was written
    pipeline.write_research(settings, name)
    staged_inode = _held(work.staged_safe(name)[0], tmp_path)
    stats = pipeline.write_research_safe(stricter, name)
    assert Path(work.variant("research-safe", name)).stat().st_ino != staged_inode, "written alone, not the copy"
    assert research_safe(stricter, staged=False)[2] == {k: v for k, v in stats.as_dict().items() if k != "seconds"}
    assert stats.safe_threshold == 0.1 and stats.rows_dropped_unsafe > 0
    pipeline.write_research(settings, name)
    Path(work.variant("research", name)).write_bytes(b"")  # research changed after it staged its copy
    staged_inode = _held(work.staged_safe(name)[0], tmp_path)
    stats = pipeline.write_research_safe(settings, name)  # written alone, not the staged copy
    assert Path(work.variant("research-safe", name)).stat().st_ino != staged_inode
    assert not any(Path(p).exists() for p in work.staged_safe(name))
    assert research_safe(settings, staged=False)[2] == {k: v for k, v in stats.as_dict().items() if k != "seconds"}


def test_research_safe_written_alone_refuses_removals_newer_than_research(matched):
    """Written alone, research-safe comes from the shard and its removals: only while those are the ones
    research was written from, so that it stays research minus its unsafe rows."""
    from relaion_pipeline.stages import pipeline

    settings, name, work = matched
    pipeline.write_research(settings, name)
    removals = pq.read_table(work.removals(name))
    assert removals.num_rows > 1
    pq.write_table(removals.slice(1), work.removals(name))  # a newer removals table, research not rewritten
    with pytest.raises(pipeline.StageError, match="its removals changed since research was written"):
        pipeline.write_research_safe(settings.with_(safe_threshold=0.2), name)  # not the staged rule


def test_variants_dictionary_encode_every_column_but_floating_point_ones_nested_ones_too(tmp_path):
    """Scores are written as plain values (a dictionary of nearly as many values as rows only costs), every
    other column, nested or not, dictionary-encoded; the rows are the shard's either way."""
    n = 1_000
    table = pa.table(
        {
            "URL": [f"http://h{i % 7}.example/{i}.jpg" for i in range(n)],
            "tags": pa.array([["a", "b"][: i % 3] if i % 5 else None for i in range(n)], pa.list_(pa.string())),
            "box": pa.array(
                [{"score": i / n, "label": f"l{i % 3}"} for i in range(n)],
                pa.struct([("score", pa.float32()), ("label", pa.string())]),
            ),
            "scores": pa.array([[i / n, 1 - i / n] for i in range(n)], pa.list_(pa.float64())),
            "punsafe": pa.array(np.linspace(0, 1, n), pa.float64()),
        }
    )
    source, research = tmp_path / "in.parquet", tmp_path / "research.parquet"
    pq.write_table(table, source)

    variants.write_research(str(source), np.array([3], np.int64), str(research))

    kept = np.ones(n, bool)
    kept[3] = False
    assert pq.read_table(research).equals(table.filter(pa.array(kept)))
    chunks = pq.ParquetFile(research).metadata.row_group(0)
    dictionary = {
        chunks.column(i).path_in_schema: "RLE_DICTIONARY" in chunks.column(i).encodings
        for i in range(chunks.num_columns)
    }
    assert dictionary == {
        "URL": True,
        "tags.list.element": True,
        "box.score": False,
        "box.label": True,
        "scores.list.element": False,
        "punsafe": False,
    }
