"""The one cache: every artifact derived from a shard is kept under a key of everything it depends on.

What is kept (`ARTIFACTS`): the lookup-hash index, the rows it names for a list file, the image hits and PDQ
near matches of a sidecar, the shard's and sidecar's counts, the input check's digest, and the research-safe
copy the research stage stages. Each one's key is a digest of

- the fingerprints of the files it is made from (`fingerprint`: size, times, inode or ETag),
- the settings and list facts it reads (given by its caller),
- the code that makes it: the compiled code of the functions named in its `Artifact.made_by` and,
  transitively, of every function, class, constant and declaration (a list kind) of this package they refer
  to (`code_digest`), with the versions of Python and of the libraries that compute values (DuckDB, pyarrow,
  numpy, numba, idna). A change to the SQL text of a query, to the kernel that hashes URLs or to a list kind
  changes the key; nobody bumps a number by hand. It is the code the process runs, not the files on disk (an
  upgrade may replace them under a running process); a change of comments or formatting alone changes nothing.

An artifact is reused only when its record's key is the one asked for *and* its files are still the ones the
record was written with (their fingerprints): an artifact edited, replaced or truncated after it was written is
made again, never trusted. The record is written after the artifact, so an interrupted write leaves nothing
that is reused. `tests/core/test_cache.py` changes each dependency of each artifact in turn and watches it rebuild.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pyarrow as pa

from relaion_pipeline.core import storage

log = logging.getLogger(__name__)

PACKAGE = "relaion_pipeline"
LIBRARIES = ("duckdb", "pyarrow", "numpy", "numba", "idna")  # they compute the values an artifact holds


@dataclass(frozen=True)
class Artifact:
    """A kind of cached artifact. `suffix`: its file under `folder` of the work location
    (`<work>/<folder>/<shard><suffix>`, beside the shard's index by default); `made_by`: the functions
    (`module:qualname` in this package) whose code, and the code they use, makes it."""

    name: str
    suffix: str
    made_by: tuple[str, ...]
    folder: str = "index"

    def __post_init__(self):
        if not self.made_by or not all(":" in f for f in self.made_by):
            raise ValueError(f"artifact {self.name!r}: made_by must name functions as 'module:qualname'")

    def code(self) -> str:
        """The digest of the code that makes this artifact (see the module docstring), computed once a process:
        code does not change while it runs."""
        if self.name not in _CODE:
            _CODE[self.name] = code_digest(*(resolve(name) for name in self.made_by))
        return _CODE[self.name]


_CODE: dict[str, str] = {}


def new_process() -> None:
    """Forget the digests of code computed so far, as a new process would (for tests that change code)."""
    _CODE.clear()


INDEX = Artifact("lookup-hash index", ".parquet", ("match.index:build", "canonical.url_sql:_canonical_udf"))
CANDIDATES = Artifact("url candidates", ".url-candidates.parquet", ("match.index:candidates",))
IMAGE_HITS = Artifact("image hits", ".image-hits.parquet", ("match.matching:image_hits", "match.index:_keyless"))
NEAR_MATCHES = Artifact(
    "pdq near matches", ".pdq-matches.parquet", ("match.near_matching:near", "match.near_matching:_hits")
)
SIDECAR_COUNTS = Artifact("sidecar counts", ".sidecar.json", ("match.matching:sidecar_counts_sql",))
INPUT_COUNTS = Artifact(
    "input check counts", ".input-check.json", ("stages.input_counts:count", "match.matching:shard_counts_sql")
)
INPUT_DIGEST = Artifact("input digest", ".input-digest.json", ("validation.checks:_validated",))
STAGED_SAFE = Artifact(  # its files are the staged variant and unsafe rows (`pipeline.Work.staged_safe`)
    "staged research-safe",
    ".json",
    ("stages.variants:write_research", "stages.variants:safe_keep_mask"),
    "staged/research-safe",
)
REMOVAL_KEYS = Artifact("removal-list keys", ".removal-keys.parquet", ("stages.removal_keys:keys",))
ARTIFACTS = (
    INDEX,
    CANDIDATES,
    IMAGE_HITS,
    NEAR_MATCHES,
    SIDECAR_COUNTS,
    INPUT_COUNTS,
    INPUT_DIGEST,
    STAGED_SAFE,
    REMOVAL_KEYS,
)


def resolve(name: str):
    """The object `module:qualname` of this package."""
    module, qualname = name.split(":")
    found: Any = importlib.import_module(f"{PACKAGE}.{module}")
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


# --- the digest of code ----------------------------------------------------------------------------------------

_SOURCES: dict[int, tuple[Any, str]] = {}  # id -> (the object, kept alive so the id is not reused; its text)


def _source(obj) -> str:
    """What stands for a function's or class's code: the code the process runs (its compiled instructions,
    names and constants, the text of SQL included; defaults), not the file on disk, which an upgrade may have
    replaced while this process still runs the old code. Comments and formatting do not count."""
    kept = _SOURCES.get(id(obj))
    if kept is None or kept[0] is not obj:
        if isinstance(obj, type):
            plain = {k: _stable(v) for k, v in vars(obj).items() if isinstance(v, _PLAIN) and not k.startswith("__")}
            text = repr((obj.__qualname__, [b.__qualname__ for b in obj.__mro__], sorted(plain.items())))
        else:
            text = repr((_code_text(obj.__code__), _stable(obj.__defaults__), _stable(obj.__kwdefaults__)))
        kept = _SOURCES[id(obj)] = (obj, text)
    return kept[1]


def _code_text(code: types.CodeType) -> str:
    """A code object's instructions, names and constants, nested code objects included (their repr holds an
    address, which differs from one process to the next)."""
    consts = [_code_text(c) if isinstance(c, types.CodeType) else _stable(c) for c in code.co_consts]
    return repr((code.co_code, code.co_names, code.co_varnames, code.co_freevars, consts))


def _stable(value) -> str:
    """repr of a plain value that is the same in every process (a set's order depends on string hashing,
    which differs from one process to the next)."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(_stable(v) for v in value)})"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({[_stable(v) for v in value]})"
    if isinstance(value, dict):
        return f"dict({sorted((_stable(k), _stable(v)) for k, v in value.items())})"
    return repr(value)


def _ours(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object and the code objects nested in it use."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _names(const)
    return found


_PLAIN = (str, bytes, int, float, bool, tuple, frozenset, type(None))


def _uses(obj) -> list[tuple[str, Any]]:
    """What a function or class of this package refers to: (name, object) for each global it uses that is a
    function, class or plain constant of this package, or an attribute of one of this package's modules."""
    if isinstance(obj, type):
        members = [inspect.unwrap(m) for m in vars(obj).values() if inspect.isfunction(inspect.unwrap(m))]
        members += [p.fget for p in vars(obj).values() if isinstance(p, property) and p.fget]
        source = sys.modules[obj.__module__].__file__  # not the methods a decorator made (a dataclass's __init__)
        return [
            (f"{obj.__module__}.{obj.__qualname__}.{m.__name__}", m)
            for m in members
            if m.__code__.co_filename == source
        ]
    code = getattr(obj, "__code__", None)
    if code is None:
        return []
    names, scope = _names(code), obj.__globals__
    found: list[tuple[str, Any]] = []
    for name in sorted(n for n in names if not n.startswith("__")):
        value = scope.get(name)
        if value is None:
            continue
        if isinstance(value, types.ModuleType):
            if value.__name__.startswith(PACKAGE + "."):
                for attribute in sorted(a for a in names & set(vars(value)) if not a.startswith("__")):
                    member = getattr(value, attribute)
                    if not isinstance(member, types.ModuleType):
                        found.append((f"{value.__name__}.{attribute}", member))
        else:
            found.append((f"{obj.__module__}.{name}", value))
    return found


def code_digest(*roots) -> str:
    """sha256 over the source of `roots` and of every function, class and plain constant of this package they
    refer to, transitively (`closure`), and the versions of `LIBRARIES`."""
    digest = hashlib.sha256()
    digest.update(f"python=={sys.version}\n".encode())
    for library in LIBRARIES:
        digest.update(f"{library}=={_version(library)}\n".encode())
    for label, text in closure(*roots):
        digest.update(f"{label}\n{text}\n".encode())
    return digest.hexdigest()


def closure(*roots) -> list[tuple[str, str]]:
    """(name, source or value) of `roots` and of every function, class and plain constant of this package they
    refer to, transitively; and of every method, of a class of a module they come from, that they call by name
    on an argument (`roles.key_sql(...)`: only its name is in the code). A name that merely looks like something
    used (an attribute of another object named like a module's function or a method) is taken too: the digest
    then changes more often, never less."""
    found: list[tuple[str, str]] = []
    seen: set[int] = set()
    functions: list = []
    todo = [(f"{getattr(r, '__module__', '')}.{getattr(r, '__qualname__', repr(r))}", r) for r in roots]
    while todo:
        while todo:
            label, obj = todo.pop()
            obj = getattr(obj, "py_func", obj)  # a compiled (numba) function: its Python source
            obj = inspect.unwrap(obj) if callable(obj) else obj
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj) or isinstance(obj, type):
                if _ours(obj):
                    found.append((label, _source(obj)))
                    todo.extend(_uses(obj))
                    if inspect.isfunction(obj):
                        functions.append(obj)
            elif isinstance(obj, _PLAIN) or isinstance(obj, pa.Schema):
                found.append((label, _stable(obj)))
            elif _declared(obj):  # a declaration such as a list kind (`kinds.PDQ`): its fields, and its class's code
                found.append((label, _stable(obj)))
                todo.append((f"{type(obj).__module__}.{type(obj).__qualname__}", type(obj)))
        methods = _methods({f.__module__ for f in functions})
        called = set().union(*(_names(f.__code__) for f in functions)) if functions else set()
        todo = [m for name in sorted(called & set(methods)) for m in methods[name] if id(m[1]) not in seen]
    return found


def _methods(modules: set[str]) -> dict[str, list[tuple[str, Any]]]:
    """The methods and properties of the classes defined in `modules`, by name."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for module in sorted(modules):
        for cls in vars(sys.modules[module]).values():
            if isinstance(cls, type) and cls.__module__ == module:
                for label, member in _uses(cls):
                    found.setdefault(label.rsplit(".", 1)[-1], []).append((label, member))
    return found


def _declared(obj) -> bool:
    """Whether `obj` is an instance of a frozen dataclass of this package: a value fixed where it is declared."""
    kind = type(obj)
    return dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen and _ours(kind)


def _version(library: str) -> str:
    module = sys.modules.get(library)
    found = getattr(module, "__version__", None) if module else None
    if found:
        return str(found)
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "absent"


# --- the records -----------------------------------------------------------------------------------------------


def fingerprint(location: str) -> dict:
    """What tells that a file changed since it was written or read, from one stat: its size and modification
    time, and locally its inode and change time (which no one can set back: a file copied over another with
    the same size and modification time restored still differs), on an object store its ETag."""
    fs, path = storage.filesystem(location)
    info = fs.info(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    found = {"bytes": info.get("size"), "modified": str(modified)}
    if "ino" in info:  # local
        found |= {"inode": info["ino"], "changed": str(info.get("created"))}
    elif info.get("ETag") or info.get("etag"):
        found["etag"] = str(info.get("ETag") or info.get("etag")).strip('"')
    return found


def key(artifact: Artifact, depends: dict) -> dict:
    """The key of `artifact` made from `depends` (fingerprints, settings, list facts: JSON values)."""
    return json.loads(json.dumps({"artifact": artifact.name, "code": artifact.code(), "depends": depends}))


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_path(work: str, shard: str, artifact: Artifact) -> str:
    """The record of an artifact kept for `shard`: its key and the fingerprints of its files."""
    base = storage.join(work, artifact.folder, shard) + artifact.suffix
    return base if base.endswith(".json") else base + ".json"


def path(work: str, shard: str, artifact: Artifact) -> str:
    """The artifact's file, beside the shard's index (for a JSON value, its record holds the value)."""
    return storage.join(work, artifact.folder, shard) + artifact.suffix


@dataclass(frozen=True)
class Kept:
    """An artifact found in the cache: its record's `extra` (what its writer kept about it) and `value` (for
    an artifact that is a JSON value)."""

    extra: dict
    value: Any = None


def lookup(work: str, shard: str, artifact: Artifact, depends: dict, files: tuple[str, ...] = ()) -> Kept | None:
    """The artifact kept for `shard` under the key of `depends`, when its record has that key and its `files`
    (by default its own file, for a table) are unchanged since it was written; else None (and why is logged)."""
    where = record_path(work, shard, artifact)
    try:
        record = storage.read_json(where)
    except FileNotFoundError:  # never kept
        return None
    except (ValueError, OSError):
        log.warning("%s: unreadable cache record, the %s is made again", where, artifact.name)
        return None
    if not isinstance(record, dict) or record.get("digest") != _digest(
        {k: v for k, v in record.items() if k != "digest"}
    ):
        log.warning("%s: the cache record was edited, the %s is made again", where, artifact.name)
        return None
    if record.get("key") != key(artifact, depends):
        return None
    files = files or _own(work, shard, artifact)
    kept = record.get("files", {})
    for file in files:
        try:
            found = fingerprint(file)  # one stat (a HEAD on an object store) a file
        except FileNotFoundError:  # removed (a clean-up of the work location): made again, nothing to report
            log.info("%s: no longer there, the %s is made again", file, artifact.name)
            return None
        if kept.get(file) != found:
            log.warning("%s: changed since it was kept in the cache, the %s is made again", file, artifact.name)
            return None
    return Kept(extra=record.get("extra", {}), value=record.get("value"))


def _own(work: str, shard: str, artifact: Artifact) -> tuple[str, ...]:
    own = path(work, shard, artifact)
    return () if own == record_path(work, shard, artifact) else (own,)


def put(
    work: str, shard: str, artifact: Artifact, depends: dict, files: tuple[str, ...] = (), value=None, extra=None
) -> None:
    """Record the artifact just written for `shard` (its `files`, by default its own file, written before
    this), or the JSON `value` it is, under the key of `depends`."""
    files = files or _own(work, shard, artifact)
    record = {"key": key(artifact, depends), "files": {file: fingerprint(file) for file in files}}
    record |= {"extra": extra or {}, "value": value}
    storage.write_json_atomic(record | {"digest": _digest(record)}, record_path(work, shard, artifact))


def forget(work: str, shard: str, artifact: Artifact) -> None:
    """Remove the artifact's record (first: an artifact without one is never used) and its file."""
    storage.remove(record_path(work, shard, artifact))
    storage.remove(path(work, shard, artifact))


def value(work: str, shard: str, artifact: Artifact, depends: dict, compute: Callable[[], Any]):
    """`compute()` (a JSON value) for the key of `depends`, computed once and kept while the key holds."""
    kept = lookup(work, shard, artifact, depends)
    if kept is not None:
        return kept.value
    found = json.loads(json.dumps(compute()))  # as it reads back (tuples are lists)
    put(work, shard, artifact, depends, value=found)
    return found


def table(work: str, shard: str, artifact: Artifact, depends: dict, compute: Callable[[], pa.Table], keep: bool = True):
    """The table `compute()` for the key of `depends`, read from the cache when kept there for that key, and
    kept there when `keep`."""
    if lookup(work, shard, artifact, depends) is not None:
        return storage.read_table(path(work, shard, artifact))
    found = compute()
    if keep:
        storage.write_parquet_atomic(found, path(work, shard, artifact))
        put(work, shard, artifact, depends)
    return found


# --- the digests of files --------------------------------------------------------------------------------------


def _digest_record(work: str, location: str) -> str:
    """Where the digest of the file at `location` is kept: under the work location, by a digest of its name."""
    return storage.join(work, "digests", hashlib.sha256(location.encode()).hexdigest()[:40] + ".json")


def sha256(work: str, location: str) -> tuple[int, str]:
    """Size and sha256 of the file at `location`, read once and kept (under `work`) while the file is the one
    that was read: its fingerprint, one stat (a HEAD on an object store), is the same as then. A file edited,
    replaced or truncated since is read again. What the release, the status and the checks ask of every file
    they prove, without reading it at every ask."""
    return sha256_as_of(work, location)[:2]


def sha256_as_of(work: str, location: str) -> tuple[int, str, dict]:
    """`sha256`, with the fingerprint of the file it is the digest of: a caller that goes on to use the file
    (links it, copies it) compares it with what it finds then, and trusts the digest only when they agree."""
    found = fingerprint(location)
    where = _digest_record(work, location)
    try:
        record = storage.read_json(where)
    except (FileNotFoundError, ValueError, OSError):
        record = None
    if (
        isinstance(record, dict)
        and record.get("digest") == _digest({k: v for k, v in record.items() if k != "digest"})
        and record.get("location") == location
        and record.get("fingerprint") == found
        and isinstance(record.get("bytes"), int)
        and isinstance(record.get("sha256"), str)
    ):
        return record["bytes"], record["sha256"], found
    size, digest = storage.size_and_sha256(location)
    if fingerprint(location) == found:  # not changed while it was read: what was read is what is there
        _keep_digest(where, location, found, size, digest)
    return size, digest, found


def remember_sha256(work: str, location: str, size: int, digest: str) -> None:
    """Keep the size and sha256 of a file just written (computed on the bytes as they were written), so that
    nobody reads it again to learn them while it is unchanged."""
    _keep_digest(_digest_record(work, location), location, fingerprint(location), size, digest)


def _keep_digest(where: str, location: str, found: dict, size: int, digest: str) -> None:
    record = {"location": location, "fingerprint": found, "bytes": size, "sha256": digest}
    storage.write_json_atomic(record | {"digest": _digest(record)}, where)
