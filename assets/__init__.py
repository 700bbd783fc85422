"""The Dagster layer of relaion-pipeline: assets, checks, partitions, sensors and definitions.

Thin by design: each asset calls one stage of `relaion_pipeline.stages.pipeline` and reports its statistics.
"""
