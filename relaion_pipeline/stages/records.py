"""What each stage did for a shard, as typed records: written by the stage, read by everyone else (the status,
the release, the checks, the runner, the Dagster assets) through `read`, never as JSON keys.

On disk each is `<work>/stats/<stage>/<shard>.json` with its record name and schema version (`core.records`):
a file edited, cut short or written by another version is refused with the file and field named, and the
shard is then held back and made again rather than published on a guess. Raise a record's VERSION when a
field changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from relaion_pipeline.core.records import Record


@dataclass(frozen=True)
class BlocklistBuilt(Record):
    """The merged blocklist a run matches against (the asset's metadata; its pointer file is the list's own)."""

    NAME: ClassVar[str] = "blocklist"
    VERSION: ClassVar[int] = 1

    version: str
    entries: int
    sources: list[str]
    entries_by_source_and_kind: dict[str, dict[str, int]]
    entries_by_kind: dict[str, int]
    entries_by_category: dict[str, int]
    path: str
    shrink_accepted: str  # how the lists fell short of the version before, when the operator accepted it
    seconds: float


@dataclass(frozen=True)
class IndexUse:
    """The shard's lookup-hash index: made now or reused (`match.index`), its size and the time it took."""

    reused: bool
    entries: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class RemovalRules:
    """What decides a shard's removals besides the lists (`pipeline.removal_rules`); a shard matched under
    other rules is held back (`status.settings_changed`)."""

    host_forms: str
    research_threshold: float
    keywords_sha256: str
    unsafe_tags: str
    skip_image_matching: bool


@dataclass(frozen=True)
class NearSearch:
    """How the PDQ near matches were found (`near_matching.shard_matches`)."""

    from_list: str | None
    entries_searched: int
    hashes_searched: int


@dataclass(frozen=True)
class Removals(Record):
    """The removals stage: the shard's row counts and what was removed, by kind, source, category and match."""

    NAME: ClassVar[str] = "removals"
    VERSION: ClassVar[int] = 1

    shard: str
    family: str
    blocklist_version: str
    input: dict  # the shard file's fingerprint (`cache.fingerprint`)
    sidecar_input: dict | None  # its image-hash sidecar's, None without one
    index: IndexUse
    candidate_rows: int
    rows_in: int
    rows_without_url: int
    rows_unusable_url: int
    rows_without_caption: int
    rows_other_scheme: int
    duplicate_row_keys: int
    row_keys: str
    rows_removed: int
    matches: int
    removed_by_kind: dict[str, int]
    removed_by_source: dict[str, int]
    removed_by_category: dict[str, int]
    removed_by_kind_source_category: dict[str, int]
    removed_by_match: dict[str, int]
    rules: RemovalRules
    sidecar: bool
    sidecar_rows: int
    image_hash_rows: int
    image_matching: Literal["required", "skipped"]
    sidecar_unmatched_keys: int
    pdq_low_quality_rows: int
    pdq_malformed_rows: int
    pdq_quality_out_of_range_rows: int
    near_matching: NearSearch | None
    warnings: list[str]
    seconds: float
    verified_from: str | None = None  # the list version it was matched against, when verified for a newer one


@dataclass(frozen=True)
class Research(Record):
    """The research stage: the shard minus its removals, and the file it wrote."""

    NAME: ClassVar[str] = "research"
    VERSION: ClassVar[int] = 1

    shard: str
    blocklist_version: str
    removals_sha256: str  # the removals table it was written from
    rows_in: int
    rows_removed: int
    rows_out: int
    bytes: int
    sha256: str
    seconds: float
    verified_from: str | None = None


@dataclass(frozen=True)
class ResearchSafe(Record):
    """The research-safe stage: research minus the rows above the safe threshold, and the file it wrote."""

    NAME: ClassVar[str] = "research-safe"
    VERSION: ClassVar[int] = 1

    shard: str
    blocklist_version: str
    research_sha256: str  # the research file it was made from
    score: str  # the safety score column it used, or "none"
    safe_threshold: float
    missing_score: str
    rows_in: int
    rows_dropped_unsafe: int
    rows_out: int
    bytes: int
    sha256: str
    seconds: float
    verified_from: str | None = None


STAGE_RECORDS: dict[str, type[Removals | Research | ResearchSafe]] = {
    "removals": Removals,
    "research": Research,
    "research-safe": ResearchSafe,
}
STAGES = tuple(STAGE_RECORDS)  # a shard's stages, in order
Stage = Removals | Research | ResearchSafe
