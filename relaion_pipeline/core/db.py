"""DuckDB connections as every stage opens them: bounded threads and memory, spilling into the temporary
folder, and the filesystems of the pipeline's locations registered (`storage.register`).

`match.matching.connect` adds the pipeline's UDF; a layer below it (the lists) uses this one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor, Future

import duckdb

from relaion_pipeline.core import storage
from relaion_pipeline.core.schemas import sql_string
from relaion_pipeline.core.settings import Settings


def connect(settings: Settings | None = None, writes_inputs: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the pipeline's resource limits and its locations' filesystems. Unless it `writes_inputs` (as `relaion
    hash-images` writes sidecars), what an object store says about an input file is asked once."""
    settings = settings or Settings()
    con = duckdb.connect()
    threads = settings.threads()
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET memory_limit = {sql_string(settings.memory_limit(threads))}")
    con.execute("SET enable_progress_bar = false")  # it would print over the run's logs; stages report progress
    # DuckDB spills beyond its memory limit into `.tmp` of the current folder unless told otherwise
    con.execute(f"SET temp_directory = {sql_string(os.path.join(tempfile.gettempdir(), 'relaion-duckdb'))}")
    if all(
        storage.is_local(location)
        for location in (settings.shards, settings.blocklists, settings.sidecars, settings.work)
        if location
    ):
        # Prefetching reads a row group's whole column chunks ahead, for as many row groups as it runs ahead:
        # memory that grew with the shard (a scan of 2 columns: 213 MiB at 2M rows, 398 at 20M; 141 and 152
        # without) and reads of pages that a filter skips. Remote files keep it: it merges their reads.
        con.execute("SET disable_parquet_prefetching = true")
    merged = storage.join(settings.work, "blocklist", "blocklist-")  # merged lists, named by their content
    storage.register(
        con,
        settings.shards,
        settings.blocklists,
        settings.sidecars,
        settings.work,
        unchanging=()
        if writes_inputs
        else (*(storage.join(inputs, "") for inputs in (settings.shards, settings.sidecars) if inputs), merged),
    )
    return con


def on_cursor(con: duckdb.DuckDBPyConnection, pool: Executor, function: Callable, *args) -> Future:
    """`function(cursor, *args)` run on a thread of `pool`, on a cursor of `con` of its own (one DuckDB
    connection runs one query at a time): for a query that can run while Python works."""

    def run():
        cursor = con.cursor()
        try:
            return function(cursor, *args)
        finally:
            cursor.close()

    return pool.submit(run)
