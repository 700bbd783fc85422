"""Where the stages keep their files under the work location, and reading back what a stage recorded there.

Every path of a shard's outputs is a method of `Work`, so no module spells one; `record` is the one way to
read what a stage did (a typed record, `stages.records`), with the cause when it has not done it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relaion_pipeline.core import storage
from relaion_pipeline.core.records import RecordError
from relaion_pipeline.stages import records

RESEARCH = "research"
RESEARCH_SAFE = "research-safe"


class StageError(RuntimeError):
    """A stage that cannot run because an earlier one has not produced what it needs."""


@dataclass(frozen=True)
class Work:
    """Where the stages keep their files under the work location."""

    root: str

    @property
    def blocklist_dir(self) -> str:
        return storage.join(self.root, "blocklist")

    def removals(self, name: str) -> str:
        return storage.join(self.root, "removals", name + ".parquet")

    def removed_rows(self, name: str) -> np.ndarray:
        """The shard's removed row numbers, sorted and distinct (its removals table has one row per match)."""
        removals = storage.read_table(self.removals(name), columns=["row_number"]).column("row_number")
        return np.unique(removals.to_numpy().astype(np.int64))

    def variant(self, variant: str, name: str) -> str:
        return storage.join(self.root, variant, name + ".parquet")

    def stats(self, stage: str, name: str) -> str:
        return storage.join(self.root, "stats", stage, name + ".json")

    def unsafe_rows(self, name: str) -> str:
        """Input row numbers that research-safe leaves out for their safety score (not for a list match)."""
        return storage.join(self.root, "unsafe-rows", name + ".parquet")

    def staged_safe(self, name: str) -> tuple[str, str, str]:
        """research-safe as the research stage wrote it in its own pass, for the research-safe stage to
        publish: the variant, its unsafe rows and what it was made from (`_take_staged_safe`)."""
        base = storage.join(self.root, "staged", RESEARCH_SAFE, name)
        return base + ".parquet", base + ".unsafe-rows.parquet", base + ".json"

    def failure(self, stage: str, name: str) -> str:
        """The first line of the error of the stage's last run for the shard, when it failed (`locked`)."""
        return storage.join(self.root, "failures", stage, name + ".json")

    def validation(self, suite: str, name: str) -> str:
        return storage.join(self.root, "validation", suite, name + ".json")

    def record(self, stage: str, name: str) -> records.Stage:
        """What `stage` recorded for shard `name`: StageError naming its recorded failure when it failed, the
        stage to run when it has not run, and the file and field when its record is not one this version
        reads (edited, cut short, or written by another version)."""
        path = self.stats(stage, name)
        if not storage.exists(path):
            failed = self.failure(stage, name)
            if storage.exists(failed):
                try:
                    error = storage.read_json(failed)["error"]
                except (ValueError, KeyError, TypeError):  # edited or cut short: the failure itself still holds
                    error = f"its failure record {failed} cannot be read"
                raise StageError(f"shard {name!r}: {stage} failed: {error}")
            raise StageError(f"shard {name!r}: no {stage} output yet: materialize '{stage}' for this partition first")
        try:
            return records.STAGE_RECORDS[stage].read(path)
        except RecordError as error:
            raise StageError(f"shard {name!r}: {error}: materialize '{stage}' for this partition again") from None
