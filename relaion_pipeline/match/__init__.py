"""Matching a shard against the merged list: the DuckDB queries (`matching`), the lookup-hash index
(`index`), PDQ near matching (`near_matching`, `pdq`, `pdq_index`) and image hashing for sidecars (`images`).
"""
