"""Published variants are drop-in replacements: same columns, types, metadata and row order as the input."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline import schemas, variants
from relaion_pipeline.settings import Settings

ROWS = 150_000  # more than two read batches


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
    variants.write_research_safe(str(path), roles, Settings(), str(out_path))
    out = pq.read_table(out_path)
    punsafe = out.column("punsafe").to_numpy(zero_copy_only=False)
    assert np.nanmax(punsafe) <= 0.45
    expected = sum(1 for v in table.column("punsafe").to_pylist() if v is None or v <= 0.45)
    assert out.num_rows == expected
    assert out.column("punsafe").null_count == 1

    variants.write_research_safe(str(path), roles, Settings(missing_score="drop"), str(out_path))
    assert pq.read_table(out_path).num_rows == expected - 1


def test_research_safe_uses_nsfw_tag_when_there_is_no_score(tmp_path):
    table = pa.table(
        {"SAMPLE_ID": [1, 2, 3, 4], "URL": ["u"] * 4, "TEXT": ["t"] * 4, "NSFW": ["UNLIKELY", "NSFW", "UNSURE", None]}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    roles = schemas.detect(table.schema, "p")
    variants.write_research_safe(str(tmp_path / "p.parquet"), roles, Settings(), str(tmp_path / "s.parquet"))
    assert pq.read_table(tmp_path / "s.parquet").column("SAMPLE_ID").to_pylist() == [1, 3, 4]
    strict = Settings(unsafe_tags="NSFW,UNSURE", missing_score="drop")
    variants.write_research_safe(str(tmp_path / "p.parquet"), roles, strict, str(tmp_path / "s.parquet"))
    assert pq.read_table(tmp_path / "s.parquet").column("SAMPLE_ID").to_pylist() == [1]


def test_removing_every_row_still_writes_a_valid_empty_shard(tmp_path):
    table = pa.table({"URL": ["a", "b"], "TEXT": ["x", "y"]})
    pq.write_table(table, tmp_path / "m.parquet")
    stats = variants.write_research(str(tmp_path / "m.parquet"), np.array([0, 1]), str(tmp_path / "r.parquet"))
    out = pq.read_table(tmp_path / "r.parquet")
    assert out.num_rows == 0 and out.schema.equals(table.schema)
    assert stats.rows_out == 0 and len(stats.sha256) == 64


@pytest.mark.parametrize("rows", [0, 1, 7, 5_000])
def test_positions_in_research_map_back_to_the_shards_row_numbers(rows):
    """research-safe records its dropped rows by shard row number (the removal list hashes those rows): the
    mapping from research positions must equal indexing the shard's surviving row numbers."""
    rng = np.random.default_rng(rows)
    removed = np.unique(rng.integers(0, max(rows, 1), size=rows // 3)) if rows else np.zeros(0, np.int64)
    research = np.setdiff1d(np.arange(rows), removed)
    positions = np.sort(rng.choice(research.size, size=research.size // 2, replace=False))
    assert variants.shard_rows(positions, removed).tolist() == research[positions].tolist()
    if rows:  # every row removed but the last, and none removed
        assert variants.shard_rows(np.array([0]), np.arange(rows - 1)).tolist() == [rows - 1]
        assert variants.shard_rows(np.arange(rows), np.zeros(0, np.int64)).tolist() == list(range(rows))


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
