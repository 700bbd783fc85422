"""One answer to "is this shard current, is it publishable, and if not, why", and the same for the shards
of a release.

Every reader asks here: `relaion run` (a shard that is publishable as it is, is skipped), the release (it
publishes the publishable shards and holds back the rest with their reason), the sensors (a shard matched
against another list version, or whose input was replaced, is run again), incremental list updates (which
shards can be verified against a new version without a rerun) and the release's check (whether every
blocking check passed on the bytes published). Nobody re-derives it from the stage records (`stages.records`)
or the checks' records.

A shard is publishable when, in this order (the first that fails is the reason):
1. its three stages have output (else the stage's recorded failure, or the input's own problem);
2. all three were made against the current list version;
3. its shard file and image-hash sidecar are the files its removals were computed from;
4. research was written from this removals table, research-safe from this research;
5. they were made with the settings now in effect (removal rules, safe threshold, missing-score rule): a
   release's manifest states these settings, so a shard made with others would make it say something false;
6. every blocking check passed on exactly these bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaion_pipeline.canonical import urls
from relaion_pipeline.core import cache, shards, storage
from relaion_pipeline.core.records import RecordError
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.lists import blocklists
from relaion_pipeline.stages import records
from relaion_pipeline.stages.pipeline import fingerprint, input_fingerprints, read_stats, removal_rules
from relaion_pipeline.stages.work import StageError, Work
from relaion_pipeline.validation.checks import BLOCKING, INPUT_WELL_FORMED, CheckRecord

STAGES = records.STAGES


@dataclass(frozen=True)
class Chain:
    """The records of a shard's three stages, as they wrote them."""

    removals: records.Removals
    research: records.Research
    research_safe: records.ResearchSafe

    def of(self, stage: str) -> records.Stage:
        return dict(zip(STAGES, (self.removals, self.research, self.research_safe), strict=True))[stage]

    @property
    def versions(self) -> set[str]:
        return {self.of(stage).blocklist_version for stage in STAGES}


@dataclass(frozen=True)
class ShardStatus:
    """Whether a shard can be published as it is (`reason` empty) and its chain of outputs, when complete."""

    name: str
    reason: str = ""
    chain: Chain | None = None

    @property
    def publishable(self) -> bool:
        return not self.reason


def chain(settings: Settings, name: str) -> Chain:
    """The shard's chain of outputs; StageError naming the first stage without output (and its failure)."""
    return Chain(*(read_stats(settings, stage, name) for stage in STAGES))


def of_shard(settings: Settings, name: str, version: str | None = None) -> ShardStatus:
    """The status of one shard against the current list version (`version`, when the caller read it)."""
    if version is None:
        version = blocklists.read_current(Work(settings.work).blocklist_dir)[0]
    try:
        found = chain(settings, name)
    except Exception as error:  # a missing stage is a reason to hold back, not to stop the caller
        return ShardStatus(name, input_problem(settings, name) or str(error))
    try:
        reason = _stale(settings, name, version, found) or settings_changed(settings, found)
        if not reason:
            ok, why = checks_passed(settings, name)
            reason = "" if ok else why
    except (OSError, shards.ShardError) as error:  # an input that went missing or unreadable meanwhile
        reason = input_problem(settings, name) or f"its input cannot be read ({error})"
    return ShardStatus(name, reason, found)


def of_shards(settings: Settings, names: list[str]) -> list[ShardStatus]:
    """The status of each shard of `names` (sorted), against the current list version."""
    version = blocklists.read_current(Work(settings.work).blocklist_dir)[0]
    return [of_shard(settings, name, version) for name in sorted(names)]


def input_problem(settings: Settings, name: str) -> str:
    """The real cause when a shard's outputs are missing or stale because of its inputs: the shard file is
    missing or damaged (truncated, as while it is still being uploaded), or the keyword file is missing.
    Empty when the inputs read."""
    try:
        shards.open_parquet(shards.resolve(settings.shards, name).path)
    except shards.ShardError as error:
        return str(error)
    except OSError as error:
        return f"input shard cannot be read ({error})"
    if settings.keywords and not storage.exists(settings.keywords):
        return f"{settings.keywords}: keyword file does not exist (setting keywords, RELAION_KEYWORDS)"
    return ""


def _stale(settings: Settings, name: str, version: str, found: Chain) -> str:
    """Why a shard's outputs do not form one consistent chain for the current list version and inputs."""
    work = Work(settings.work)
    if found.versions != {version}:
        return f"matched against blocklist {found.removals.blocklist_version}, current is {version}"
    changed = inputs_changed(settings, name, found.removals)
    if changed:
        problem = input_problem(settings, name)
        return f"{changed}; now {problem}" if problem else changed
    if cache.sha256(settings.work, work.removals(name))[1] != found.research.removals_sha256:
        return "research was written from an older removals table"
    if found.research.sha256 != found.research_safe.research_sha256:
        return "research-safe was written from an older research file"
    return ""


def inputs_changed(settings: Settings, name: str, removals: records.Removals) -> str:
    """Why the shard or its image-hash sidecar is not what its removals were computed from (empty if it is)."""
    return _changed(input_fingerprints(settings, name), removals)


def _changed(current: dict, removals: records.Removals) -> str:
    """Why the inputs whose fingerprints are `current` are not those the removals were computed from."""
    if current["input"] != removals.input:
        return "input shard changed since it was matched"
    if current["sidecar_input"] != removals.sidecar_input:
        return "image-hash sidecar added, changed or removed since the shard was matched"
    return ""


def settings_changed(settings: Settings, found: Chain) -> str:
    """Why a shard's outputs were made with other settings than `settings` (empty when they were not)."""
    rules = found.removals.rules
    if rules.host_forms != urls.HOST_FORMS:
        return f"matched with other URL host forms than {urls.HOST_FORMS} (non-ASCII hosts in IDNA form too)"
    if rules != removal_rules(settings):
        return (
            "matched with another keyword rule or image matching (research threshold, keywords, unsafe tags or"
            " skip_image_matching)"
        )
    safe = found.research_safe
    if safe.safe_threshold != settings.safe_threshold or safe.missing_score != settings.missing_score:
        return "research-safe was written with another safe threshold or missing-score rule"
    return ""


def checks_passed(settings: Settings, name: str) -> tuple[bool, str]:
    """Whether every blocking check of a shard passed on the files now in the work location, and if not why."""
    work = Work(settings.work)
    record = _check_record(work, INPUT_WELL_FORMED, name)
    if isinstance(record, str):
        return False, record
    if record.validated_fingerprint != fingerprint(shards.resolve(settings.shards, name).path):
        return False, f"check {INPUT_WELL_FORMED} ran on an older input file"
    if not record.success:
        return False, f"check {INPUT_WELL_FORMED} failed"
    for variant in BLOCKING:
        path = work.variant(variant, name)
        if not storage.exists(path):
            return False, f"no {variant} output"
        why = _variant_checks(work, name, variant, cache.sha256(settings.work, path)[1])
        if why:
            return False, why
    return True, "passed"


def proved(settings: Settings, name: str, digests: dict[str, str]) -> bool:
    """True when every blocking check of shard `name` passed on exactly the bytes whose sha256 `digests` gives
    for each variant: no list match and rows that add up in research, research-safe within research and within
    the safe threshold. A release's own check takes the word of these checks for these bytes (their records
    name them by digest) rather than proving them again; `relaion verify` proves them from the bytes."""
    work = Work(settings.work)
    return not any(_variant_checks(work, name, variant, digests.get(variant)) for variant in BLOCKING)


def _variant_checks(work: Work, name: str, variant: str, digest: str | None) -> str:
    """Why the blocking checks of shard `name`'s `variant` did not all pass on the bytes whose sha256 is
    `digest` (empty when they did)."""
    for suite in BLOCKING[variant]:
        record = _check_record(work, suite, name)
        if isinstance(record, str):
            return record
        if record.validated_sha256 != digest:
            return f"check {suite} ran on an older {variant} file"
        if not record.success:
            return f"check {suite} failed"
    return ""


def _check_record(work: Work, suite: str, name: str) -> CheckRecord | str:
    """The record of check `suite` on shard `name`, or why there is none this version can read."""
    path = work.validation(suite, name)
    if not storage.exists(path):
        return f"check {suite} has not run"
    try:
        return CheckRecord.read(path)
    except RecordError as error:
        return f"check {suite}: {error}"


def needs_matching(settings: Settings, names: list[str]) -> list[str]:
    """Shards whose removals were not computed against the current list version (or not at all): what a new
    list version runs again (after incremental updates verified the shards it cannot touch)."""
    work = Work(settings.work)
    pointer = blocklists.read_pointer(work.blocklist_dir)
    version = pointer and pointer["version"]
    found = []
    for name in names:
        try:
            matched = work.record("removals", name).blocklist_version
        except StageError:  # never matched, failed, or a record this version cannot read: match it
            matched = None
        if matched != version:
            found.append(name)
    return found


def inputs_replaced(settings: Settings, names: list[str]) -> dict[str, dict]:
    """The shards of `names` matched before whose file or image-hash sidecar was replaced since, with the
    fingerprints of what is there now. Shards never matched, or no longer there, are not listed."""
    found = {}
    for name in names:
        try:
            removals = read_stats(settings, "removals", name)  # never matched: shard_sensor's work
            current = input_fingerprints(settings, name)
            if _changed(current, removals):
                found[name] = current
        except (StageError, shards.ShardError, FileNotFoundError):
            continue
    return found
