"""Fixtures shared by several test modules."""

import hashlib

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.core.settings import Settings

BLOCKED_URL = "http://blocked.example.org/secret-page.jpg"  # the one URL the `two_shards` partner list blocks


@pytest.fixture
def two_shards(tmp_path, monkeypatch):
    """Make shards `good-1` and `good-2` (Re-LAION style, keys `<shard>-<i>`) from (url, caption, punsafe) rows,
    and a partner list `iwf` blocking BLOCKED_URL; return the Settings of that workspace under `tmp_path`."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # run_all points it at the work folder

    def make(rows: list[tuple[str, str, float]]) -> Settings:
        shards = tmp_path / "shards"
        shards.mkdir()
        for name in ("good-1", "good-2"):
            relaion_shard(shards, name, rows)
        (tmp_path / "lists" / "iwf").mkdir(parents=True)
        expression = BLOCKED_URL.removeprefix("http://")
        (tmp_path / "lists" / "iwf" / "url_sha256.txt").write_text(
            hashlib.sha256(expression.encode()).hexdigest() + "\n"
        )
        return Settings(
            shards=str(shards),
            blocklists=str(tmp_path / "lists"),
            sidecars=str(tmp_path / "sidecars"),
            work=str(tmp_path / "work"),
            release=str(tmp_path / "releases"),
        )

    return make


def relaion_shard(folder, name: str, rows: list[tuple[str, str, float]]) -> None:
    """Write `<folder>/<name>.parquet`, a Re-LAION style shard (keys `<name>-<i>`) of (url, caption, punsafe) rows."""
    urls, captions, scores = zip(*rows, strict=True)
    table = pa.table(
        {
            "url": list(urls),
            "caption": list(captions),
            "key": [f"{name}-{i}" for i in range(len(rows))],
            "punsafe": pa.array(scores, pa.float32()),
        }
    )
    pq.write_table(table, f"{folder}/{name}.parquet")


def sensor_requests(defs: dg.Definitions, instance: dg.DagsterInstance, sensor_name: str) -> list[dg.RunRequest]:
    """The run requests one tick of a sensor of `defs` makes on `instance`."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with (
        dg.partition_loading_context(dynamic_partitions_store=instance),
        dg.build_sensor_context(
            instance=instance, resources=defs.resources, repository_def=defs.get_repository_def()
        ) as context,
    ):
        return list(sensor.evaluate_tick(context).run_requests)


def written(shard_path, keys) -> list[str]:
    """Row keys as the pipeline writes them for this shard (`row_keys`): a text key column's keys as keyed hashes,
    integer and positional keys as they are."""
    from relaion_pipeline.core import row_keys, schemas, shards

    schema = shards.open_parquet(str(shard_path)).schema_arrow
    return row_keys.Writer(str(shard_path), schemas.detect(schema, str(shard_path)), schema).many(list(keys))


def removed_keys(settings: Settings, name: str) -> list[str]:
    """The shard's own row keys of its removed rows, in row order, found by row number (what removals record)."""
    from relaion_pipeline.core import schemas
    from relaion_pipeline.stages import pipeline

    path = f"{settings.shards}/{name}.parquet"
    table = pq.read_table(path)
    roles = schemas.detect(table.schema, path)
    rows = pipeline.Work(settings.work).removed_rows(name)
    if roles.key is None:
        return [f"{name}:{n}" for n in rows]
    return [str(table.column(roles.key)[int(n)].as_py()) for n in rows]
