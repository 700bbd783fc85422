"""The pipeline's settings as a Dagster resource, so the UI's launchpad can show and override them."""

from __future__ import annotations

import dagster as dg

from relaion_pipeline.core import storage
from relaion_pipeline.core.settings import Settings


class S3Storage(dg.ConfigurableResource):
    """S3 endpoint, region and credentials for `s3://` locations. Leave a field unset to take it from the
    standard AWS environment variables; set secrets with `dg.EnvVar(...)` so the UI never shows them."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def apply(self) -> None:
        storage.configure_s3(self.endpoint_url, self.region, self.access_key_id, self.secret_access_key)


class RelaionSettings(dg.ConfigurableResource):
    """Locations and thresholds of the run (see `relaion_pipeline.core.settings.Settings` for each field)."""

    s3: S3Storage

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
    workers: int  # shards at once of `relaion run`; a run launched here is one shard
    progress_seconds: float
    skip_image_matching: bool
    allow_list_shrink: bool
    allow_partial_release: bool

    @classmethod
    def from_settings(cls, settings: Settings, s3: S3Storage | None = None) -> RelaionSettings:
        return cls(s3=s3 or S3Storage(), **settings.as_dict())

    def settings(self) -> Settings:
        """The run's settings; also points s3fs at the configured S3 service first."""
        self.s3.apply()
        return Settings(**{name: getattr(self, name) for name in Settings.__dataclass_fields__})
