"""Every setting of a pipeline run in one place, with the defaults of the embedded store under `data/`.

Each setting can come from a `RELAION_<NAME>` environment variable (e.g. `RELAION_SHARDS=s3://bucket/shards`) or
from the CLI flag of the same name; the Dagster UI reads the environment.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

MEMORY = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B|[KMGT]B)", re.IGNORECASE)  # what DuckDB's memory_limit takes
SHARD_THREADS = 2  # the cores one shard keeps busy: its two variant encoders, the index build's two kernel threads
DEFAULT_KEYWORDS = str(Path(__file__).parents[1] / "data" / "keywords.txt")


def default_data_dir() -> str:
    """`data/` of the repository (or of the working directory when installed elsewhere)."""
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return str(base / "data")


def available_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (`cpu.max`, how Kubernetes
    applies a pod's CPU limit). DuckDB alone would start a thread per CPU of the node, and be given memory
    for each."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open(os.path.join(cgroup, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        limit = None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):
        limit = None  # no readable cgroup v2 quota: the affinity stands
    return count if limit is None else min(count, max(1, limit))


def memory_cap(cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Half the memory of the process's cgroup v2 limit (`memory.max`, a pod's memory limit) in MB; None when
    there is no limit. DuckDB's default limit never exceeds it, so a pod on a node with many CPUs is not
    given memory for threads it cannot afford."""
    try:
        with open(os.path.join(cgroup, "memory.max")) as f:
            value = f.read().split()[0]
        return None if value == "max" else max(1, int(value) // 2 // 10**6)
    except (OSError, ValueError, IndexError):
        return None


def default_workers() -> int:
    """Shards processed at once by default: the CPUs this process may use (`available_cpus`) over the cores one
    shard keeps busy (`SHARD_THREADS`), at least one. More would only divide the same cores."""
    return max(1, available_cpus() // SHARD_THREADS)


def size_bytes(size: str) -> float:
    """A DuckDB memory size (`MEMORY`: 512MB, 2GB, 1.5GiB) in bytes, read as DuckDB reads it (KB = 1000 B,
    KiB = 1024 B)."""
    match = MEMORY.fullmatch(size.strip())
    if match is None:
        raise ValueError(f"expected a size such as 512MB, 2GB or 1.5GiB, got {size!r}")
    number, unit = float(match.group(0)[: match.start(2)]), match.group(2).upper()
    return number * (1024 if "I" in unit else 1000) ** "BKMGT".index(unit[0])


def _normalized(location: str) -> str:
    """A location as compared for nesting: local paths absolute and resolved, URLs without a trailing slash."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        return location.rstrip("/")
    return os.path.realpath(location.removeprefix("file://")).rstrip("/")


def _setting(default, text: str):
    """A setting's default and the one line that describes it (the CLI's help, README's table)."""
    return field(default=default, metadata={"help": text})


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _problem(name: str, value) -> str:
    """What is wrong with `value` for the setting `name` (empty when nothing is)."""
    if name == "missing_score" and value not in ("keep", "drop"):
        return f"expected 'keep' or 'drop', got {value!r}"
    if name in ("research_threshold", "safe_threshold", "removal_list_max_match_share") and not 0.0 <= value <= 1.0:
        return f"expected a number between 0 and 1, got {value}"
    if name == "duckdb_threads" and value < 0:
        return f"expected 0 (the CPUs this process may use) or more, got {value}"
    if name == "progress_seconds" and not 0.0 <= value < math.inf:
        return f"expected 0 or more seconds, got {value}"
    if name == "workers" and value < 1:
        return f"expected 1 or more shards at once, got {value}"
    if name == "duckdb_memory_limit" and value and not MEMORY.fullmatch(value.strip()):
        return f"expected a size such as 512MB, 2GB or 1.5GiB, got {value!r}"
    return ""


def parse(name: str, kind: type, raw: str, setting: str = ""):
    """`raw` as a value of `kind` (bool, int, float or str), valid for the setting `setting` when given; a
    ValueError naming `name` (a variable or flag) and what was expected otherwise."""
    text = raw.strip()
    if kind is bool:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(TRUE + FALSE)}")
    try:
        value = kind(text) if kind is not str else raw
    except ValueError:
        expected = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"{name}={raw!r}: expected {expected}") from None
    if setting and (problem := _problem(setting, value)):
        raise ValueError(f"{name}={raw!r}: {problem}")
    return value


@dataclass(frozen=True)
class Settings:
    """Locations and thresholds of a run. Locations are local paths or fsspec URLs."""

    shards: str = _setting("", "input shards: every *.parquet below is one shard")
    blocklists: str = _setting("", "partner lists: one folder per source")
    sidecars: str = _setting("", "image-hash sidecars, <shard>.parquet keyed by row key")
    work: str = _setting("", "working files (removals, variants, validation; the Dagster instance when local)")
    release: str = _setting("", "where releases are published (<release>/<version>/ and <release>/latest)")
    dagster_home: str = _setting("", "the Dagster instance (SQLite), a local folder (default: <work>/dagster)")
    keywords: str = _setting(DEFAULT_KEYWORDS, "caption keyword list of the research rule")
    research_threshold: float = _setting(0.95, "research drops rows above this punsafe whose caption hits a keyword")
    safe_threshold: float = _setting(0.45, "research-safe drops rows above this punsafe")
    unsafe_tags: str = _setting("NSFW", "shards without punsafe: NSFW tag values treated as above both thresholds")
    missing_score: str = _setting("keep", "rows with neither punsafe nor NSFW tag: 'keep' or 'drop' from research-safe")
    license: str = _setting("apache-2.0", "license named in the release's dataset card")
    removal_list_max_match_share: float = _setting(
        0.01, "publish the removal list only if list matches are at most this share of it"
    )
    duckdb_threads: int = _setting(0, "DuckDB threads; 0: the CPUs this process may use (affinity, cgroup quota)")
    duckdb_memory_limit: str = _setting(
        "",
        "DuckDB memory limit of the run, e.g. 2GB, shared by the shards at once; empty: 128MB a thread, at least"
        " 512MB a shard at once (BENCHMARKS.md)",
    )
    workers: int = _setting(
        0,
        f"shards processed at once, each in a process of its own with its share of DuckDB's threads and memory;"
        f" by default the CPUs this process may use / {SHARD_THREADS}, the cores one shard keeps busy",
    )
    progress_seconds: float = _setting(
        10.0, "seconds between two progress lines of work that lasts inside a stage (0: a line at every step)"
    )
    # fail closed unless the operator says otherwise (each is recorded in the release's manifest and card):
    skip_image_matching: bool = _setting(
        False, "match shards without an image-hash sidecar by URL only, although the lists hold image hashes"
    )
    allow_list_shrink: bool = _setting(
        False, "accept a list version in which a source is gone or lost more than 10% of a kind's entries"
    )
    allow_partial_release: bool = _setting(
        False, "publish a release without shards of the current release that failed or are held back"
    )

    def threads(self) -> int:
        """DuckDB's threads: the setting, or else the CPUs this process may use (`available_cpus`)."""
        return self.duckdb_threads or available_cpus()

    def memory_limit(self, threads: int, cgroup: str = "/sys/fs/cgroup") -> str:
        """DuckDB's memory limit for a connection with `threads` threads: the setting, or by default 128MB a
        thread and at least 512MB, but never more than half a cgroup memory limit (`memory_cap`). DuckDB spills
        beyond it; the wide scans and joins of an 18M-row shard need ~128MB a thread (64MB a thread fails), and
        a larger limit does not make them faster."""
        if self.duckdb_memory_limit:
            return self.duckdb_memory_limit
        cap = memory_cap(cgroup)
        return f"{min(max(512, 128 * threads), cap or 2**62)}MB"

    def shard_share(self, workers: int, cgroup: str = "/sys/fs/cgroup") -> Settings:
        """The settings of one of `workers` shards processed at once: its share of DuckDB's threads
        (`threads() // workers`, at least one) and of the memory limit (the setting divided by `workers`; by
        default the default limit of its own threads, at most half a cgroup memory limit divided by `workers`).
        So the run's memory stays about `workers` times one shard's. One worker: these settings as they are."""
        if workers <= 1:
            return self
        threads = max(1, self.threads() // workers)
        if self.duckdb_memory_limit:
            memory = max(1, int(size_bytes(self.duckdb_memory_limit) / workers // 10**6))
        else:
            cap = memory_cap(cgroup)
            memory = min(max(512, 128 * threads), max(1, cap // workers) if cap else 2**62)
        return replace(self, duckdb_threads=threads, duckdb_memory_limit=f"{memory}MB")

    def __post_init__(self):
        data = default_data_dir()
        defaults = {
            "shards": f"{data}/shards",
            "blocklists": f"{data}/blocklists",
            "sidecars": f"{data}/sidecars",
            "work": f"{data}/work",
            "release": f"{data}/releases",
        }
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        if not self.workers:
            object.__setattr__(self, "workers", default_workers())
        if not self.dagster_home:
            local_work = "://" not in self.work
            object.__setattr__(self, "dagster_home", f"{self.work}/dagster" if local_work else f"{data}/dagster")
        for f in fields(self):
            if problem := _problem(f.name, getattr(self, f.name)):
                raise ValueError(f"setting {f.name}: {problem}")

    def check_layout(self) -> None:
        """Refuse locations that would feed the pipeline its own files: every *.parquet below the shard location
        is a shard, so a work, release, sidecar or list location inside it would be read (and published) as
        input on the next run; and the reverse, shards inside an output location, would be overwritten."""
        shards = _normalized(self.shards)
        for name in ("work", "release", "sidecars", "blocklists", "dagster_home"):
            other = _normalized(getattr(self, name))
            if other == shards or other.startswith(shards + "/"):
                raise ValueError(
                    f"setting {name} ({getattr(self, name)}) is inside the shard location ({self.shards}): every"
                    " *.parquet below it is read as a shard, so these files would be taken as input; give"
                    f" {name} a location outside {self.shards}"
                )
            if name in ("work", "release") and shards.startswith(other + "/"):
                raise ValueError(
                    f"the shard location ({self.shards}) is inside setting {name} ({getattr(self, name)}), where"
                    " the pipeline writes: give the shards a location of their own"
                )

    @property
    def unsafe_tag_values(self) -> list[str]:
        return [t.strip() for t in self.unsafe_tags.split(",") if t.strip()]

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        """Settings from `RELAION_*` variables, then `overrides` (None values ignored). A value that is not of
        the setting's type fails naming the variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            variable = f"RELAION_{f.name.upper()}"
            raw = environ.get(variable)
            if raw not in (None, ""):
                values[f.name] = parse(variable, type(f.default), raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def layout(cls, inputs: str, outputs: str, **overrides) -> Settings:
        """The usual layout: `inputs/{shards,blocklists,sidecars}` (as `relaion demo-data` writes them) and
        `outputs/{work,releases}`; local paths or URLs."""
        inputs, outputs = str(inputs).rstrip("/"), str(outputs).rstrip("/")
        return cls(
            **{
                "shards": f"{inputs}/shards",
                "blocklists": f"{inputs}/blocklists",
                "sidecars": f"{inputs}/sidecars",
                "work": f"{outputs}/work",
                "release": f"{outputs}/releases",
                **overrides,
            }
        )

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    def to_env(self) -> dict[str, str]:
        return {f"RELAION_{k.upper()}": str(v) for k, v in self.as_dict().items()}
