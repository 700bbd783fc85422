"""Run the whole job in this process through the same Dagster definitions and instance the UI uses.

`relaion run` calls `run_all`: it registers every shard as a partition, materializes the blocklist, then each
shard's assets (with their blocking checks), then the release, and reports progress as it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from assets import shard_pool
from assets.definitions import build_definitions
from assets.instance import instance_for
from assets.partitions import shard_partitions
from relaion_pipeline import prepare, status
from relaion_pipeline.core import interrupts, shard_lock, shards, storage
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.publishing.release import preflight as release_preflight
from relaion_pipeline.stages import pipeline
from relaion_pipeline.validation import checks

TAGS = {"relaion/started_by": "relaion run"}  # tells these runs apart from the UI's and the sensors' in the UI
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the CLI prints each failure itself
# What every shard worker imports, once in the fork server: the stages, Great Expectations (the checks' 6 s) and
# the SQLite storage of the Dagster instance (2 s; a module that is not there is skipped, merely not preloaded).
PRELOAD = ("assets.runner", "great_expectations", "dagster._core.storage.sqlite_storage", "dagster._daemon",
           "dagster._core.storage.runs.sqlite", "dagster._core.storage.event_log.sqlite")  # fmt: skip
DEBUG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}  # with --debug: Dagster's tracebacks too


@dataclass
class ShardOutcome:
    name: str
    ok: bool
    rows_in: int = 0
    rows_removed: int = 0
    rows_research: int = 0
    rows_safe: int = 0
    seconds: float = 0.0
    failed_checks: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class RunSummary:
    blocklist: dict
    shards: list[ShardOutcome]
    release: dict | None
    error: str = ""

    @property
    def ok(self) -> bool:
        held_back = self.release.get("held_back") if self.release else None  # published without them: still a failure
        return not self.error and all(s.ok for s in self.shards) and self.release is not None and not held_back


def _failure(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error is not None and error.cause is not None:  # the user code's own error, not Dagster's
                error = error.cause
            if error is None:
                return "step failed"
            line = error.message.strip().splitlines()[-1]
            prefix = line.split(": ", 1)[0]  # Dagster's "package.module.SomeError: message": the message alone
            return line.split(": ", 1)[1] if prefix.endswith(error.cls_name) and ": " in line else line
    return "run failed"


def _stage_lines(settings: Settings, name: str) -> list[str]:
    """One line per stage of a shard: its time and throughput, from the stats the stage wrote."""
    lines = []
    for stage in ("removals", pipeline.RESEARCH, pipeline.RESEARCH_SAFE):
        try:
            stats = pipeline.read_stats(settings, stage, name)
        except pipeline.StageError:
            continue
        rate = stats.rows_in / stats.seconds if stats.seconds else 0
        lines.append(f"      {stage:<14} {stats.seconds:>7.1f} s  {rate:>12,.0f} rows/s")
    return lines


def _up_to_date(settings: Settings, name: str) -> bool:
    """True when the shard's outputs are a consistent chain for the current list version, its input, these
    settings, and passed their checks on exactly these bytes: what a release would publish as is."""
    return status.of_shard(settings, name).publishable


def _outcome(settings: Settings, name: str, ok: bool, seconds: float) -> ShardOutcome:
    """A shard's row counts as its stats files give them (zeros for the stages that did not finish)."""
    outcome = ShardOutcome(name=name, ok=ok, seconds=seconds)
    try:
        removals = pipeline.read_stats(settings, "removals", name)
        outcome.rows_in, outcome.rows_removed = removals.rows_in, removals.rows_removed
        outcome.rows_research = pipeline.read_stats(settings, pipeline.RESEARCH, name).rows_out
        outcome.rows_safe = pipeline.read_stats(settings, pipeline.RESEARCH_SAFE, name).rows_out
    except pipeline.StageError:
        pass
    return outcome


def run_all(settings: Settings, progress=print, force: bool = False, debug: bool = False) -> RunSummary:
    """Rebuild the blocklist, run every shard that is not up to date (every shard with `force`), publish.
    A SIGINT or SIGTERM, even one that Dagster turned into a failed step, stops it before the next step
    (`interrupts.Interrupted`): no release is published."""
    settings.check_layout()
    pipeline.removal_rules(settings)  # the keyword file is read before any work: an error names it and its flag
    release_preflight(settings)  # before any work: what would stop the release at its end fails now
    with interrupts.deferred(), shard_lock.only_run(settings.work):
        return _run_all(settings, progress, force, DEBUG if debug else QUIET)


def _run_all(settings: Settings, progress, force: bool, run_config: dict) -> RunSummary:
    instance = instance_for(settings)
    defs = build_definitions(settings)
    found = [s.name for s in shards.discover(settings.shards)]
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    new = [name for name in found if name not in known]
    if new:
        instance.add_dynamic_partitions(shard_partitions.name, new)
    progress(f"{len(found)} shards under {settings.shards} ({len(new)} new)")

    result = defs.resolve_job_def("blocklist_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags=TAGS
    )
    interrupts.raise_if_signalled()
    if not result.success:
        return RunSummary(blocklist={}, shards=[], release=None, error=f"blocklist: {_failure(result)}")
    version = storage.read_json(storage.join(pipeline.Work(settings.work).blocklist_dir, "current.json"))
    progress(f"blocklist {version['version']}: {version['entries']:,} entries from {len(version['sources'])} sources")

    if waiting := prepare.pending():
        progress(
            f"compiling {len(waiting)} matching kernels during the first shard, once for this installation"
            " (~1-2 min on 2 cores; `relaion prepare` does it at install time)"
        )
    if settings.workers == 1:
        outcomes = _one_at_a_time(settings, defs, instance, found, version["version"], force, run_config, progress)
    else:
        outcomes = _at_once(settings, found, version["version"], force, run_config, progress)

    result = defs.resolve_job_def("release_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags=TAGS
    )
    interrupts.raise_if_signalled()
    if not result.success:
        return RunSummary(blocklist=version, shards=outcomes, release=None, error=f"release: {_failure(result)}")
    materialization = result.asset_materializations_for_node("release")[-1]
    release = {key: value.value for key, value in materialization.metadata.items()}
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    error = f"release {release['version']}: {_check_failure(settings, failed[0], release['version'])}" if failed else ""
    return RunSummary(blocklist=version, shards=outcomes, release=release, error=error)


def _check_failure(settings: Settings, evaluation, version: str) -> str:
    """Why the release's own check failed: its first problems, from its record (file names and counts only)."""
    try:
        record = checks.ReleaseCheckRecord.read(pipeline.Work(settings.work).validation(evaluation.check_name, version))
        found = [*record.problems, *(f"{name}: published without passed checks" for name in record.unchecked)]
    except (OSError, ValueError):
        found = []
    named = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
    return f"check {evaluation.check_name} failed" + (f" ({named})" if named else "") + "; run `relaion verify` on it"


def _one_at_a_time(settings: Settings, defs, instance, found: list[str], version: str, force: bool,
                   run_config: dict, progress) -> list[ShardOutcome]:  # fmt: skip
    """Each shard in turn, in this process."""
    shard_job = defs.resolve_job_def("shard_job")
    outcomes = []
    for index, name in enumerate(found, start=1):
        interrupts.raise_if_signalled()
        started = time.perf_counter()
        if not force and _up_to_date(settings, name):
            outcome = _outcome(settings, name, ok=True, seconds=time.perf_counter() - started)
            outcomes.append(outcome)
            progress(f"[{index}/{len(found)}] {name}: up to date for blocklist {version}, skipped")
            continue
        outcome = _run_shard(shard_job, instance, settings, name, run_config, started)
        interrupts.raise_if_signalled()
        outcomes.append(outcome)
        _report(settings, outcome, f"[{index}/{len(found)}]", progress)
    return outcomes


def _at_once(settings: Settings, found: list[str], version: str, force: bool, run_config: dict,
             progress) -> list[ShardOutcome]:  # fmt: skip
    """The shards not up to date, `settings.workers` at once in processes of their own (`shard_pool`), each
    with its share of DuckDB's threads and memory; a line for each as it ends, counted in the order they end."""
    outcomes, queued = [], []
    for name in found:
        interrupts.raise_if_signalled()
        if not force and _up_to_date(settings, name):
            outcomes.append(_outcome(settings, name, ok=True, seconds=0.0))
            progress(f"[{len(outcomes)}/{len(found)}] {name}: up to date for blocklist {version}, skipped")
        else:
            queued.append(name)

    def done(name: str, outcome: ShardOutcome | None, error: str) -> None:
        if outcome is None:  # the job raised, or its worker died
            outcome = _outcome(settings, name, ok=False, seconds=0.0)
            outcome.error = error
        outcomes.append(outcome)
        _report(settings, outcome, f"[{len(outcomes)}/{len(found)}]", progress)

    if queued:
        workers = min(settings.workers, len(queued))
        share = settings.shard_share(workers)
        kernels = {"NUMBA_NUM_THREADS": str(share.threads())}  # the compiled kernels' threads, read at import
        shard_pool.run(ShardJob(share, run_config), queued, workers, done, preload=PRELOAD, env=kernels)
    order = {name: index for index, name in enumerate(found)}
    return sorted(outcomes, key=lambda outcome: order[outcome.name])


@dataclass
class ShardJob:
    """`shard_job` of one shard, as a worker process runs it: against the run's Dagster instance, with the
    worker's share of the settings. Built on its first shard, kept for the worker's next ones."""

    settings: Settings
    run_config: dict

    def __call__(self, name: str) -> ShardOutcome:
        if not hasattr(self, "_job"):
            self._instance = instance_for(self.settings)
            self._job = build_definitions(self.settings).resolve_job_def("shard_job")
        return _run_shard(self._job, self._instance, self.settings, name, self.run_config, time.perf_counter())


def _run_shard(shard_job, instance, settings: Settings, name: str, run_config: dict, started: float) -> ShardOutcome:
    """Run one shard's job; its outcome as its stats and checks say (the error of a failed step or check)."""
    result = shard_job.execute_in_process(
        partition_key=name, instance=instance, raise_on_error=False, run_config=run_config, tags=TAGS
    )
    outcome = _outcome(settings, name, ok=result.success, seconds=time.perf_counter() - started)
    outcome.failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success:
        outcome.error = (
            "failed checks: " + ", ".join(outcome.failed_checks) if outcome.failed_checks else _failure(result)
        )
    return outcome


def _report(settings: Settings, outcome: ShardOutcome, position: str, progress) -> None:
    """The line of a shard that ran, then a line per stage."""
    rate = outcome.rows_in / outcome.seconds if outcome.seconds else 0
    status = "ok" if outcome.ok else f"FAILED ({outcome.error})"
    progress(
        f"{position} {outcome.name}: {outcome.rows_in:,} rows in, {outcome.rows_removed:,} removed, "
        f"research {outcome.rows_research:,}, research-safe {outcome.rows_safe:,} "
        f"({outcome.seconds:.1f} s, {rate:,.0f} rows/s) {status}"
    )
    for line in _stage_lines(settings, outcome.name):
        progress(line)
