"""relaion-pipeline: the library behind the Re-LAION job, free of orchestration (Dagster lives in `assets/`).

Its layers, each importing only the ones above it in this list (tests/core/test_layout.py holds it to that):

- `core`        settings, locations and storage, shard schemas and discovery, locks, signals, the cache, row keys
- `canonical`   URL canonicalization and lookup expressions: the Python reference, the compiled kernels, the SQL tier
- `lists`       the list kinds, partner lists merged into one versioned blocklist, PDQ facts
- `match`       matching a shard: the DuckDB queries, the lookup-hash index, PDQ near matching, image hashing
- `stages`      the stages of one shard (removals, research, research-safe) and how variants are written
- `validation`  the blocking checks, their Great Expectations layer, the leak search
- `status`      whether a shard is current and publishable, and if not why: the one place that answers it
- `incremental` incremental list updates: the shards a new list version cannot touch, verified without a rerun
- `publishing`  releases: publish, manifest, verify, clean, the card and reports
- `alerting`    alerts on failed checks and runs, and their channels
- `demo_data`   the synthetic demo data
- `prepare`, `cli`  the commands
"""
