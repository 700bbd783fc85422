"""One dynamic partition per shard, keyed by the shard's path relative to the shard location."""

import dagster as dg

shard_partitions = dg.DynamicPartitionsDefinition(name="shards")
