"""The pipeline's settings as a Dagster resource, so the UI's launchpad can show and override them."""

from __future__ import annotations

import dagster as dg

from relaion_pipeline.settings import Settings


class RelaionSettings(dg.ConfigurableResource):
    """Locations and thresholds of the run (see `relaion_pipeline.settings.Settings` for each field)."""

    shards: str
    blocklists: str
    sidecars: str
    work: str
    release: str
    dagster_home: str
    keywords: str
    research_threshold: float
    safe_threshold: float
    unsafe_tags: str
    missing_score: str
    license: str
    removal_list_max_match_share: float
    duckdb_threads: int
    duckdb_memory_limit: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RelaionSettings:
        return cls(**settings.as_dict())

    def settings(self) -> Settings:
        return Settings(**{name: getattr(self, name) for name in Settings.__dataclass_fields__})
