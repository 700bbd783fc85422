"""The Dagster layer of relaion-pipeline: assets, checks, partitions, sensors and definitions.

Thin by design: each asset calls one stage of `relaion_pipeline.pipeline` and reports its statistics.
"""
