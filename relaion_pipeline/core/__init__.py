"""What every layer stands on: settings, locations and storage, shard schemas and discovery, locks,
signals, the cache of derived artifacts, row keys, compiled-code helpers.
"""
