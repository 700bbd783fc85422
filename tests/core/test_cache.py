"""The one cache (`relaion_pipeline.core.cache`): each cached artifact is made again when anything it depends on
changes (an input file, the list, a setting it reads, the code that makes it, a library that computes it, its
own file or record edited), and reused when something it does not depend on changes.

One shard of the demo (every list kind, a sidecar with image hashes and PDQ hashes) goes through the stages
again after each change; which artifacts were made again is read from the cache's records (a record is
rewritten exactly when its artifact is made), the near matches from removals' stats (they are rewritten every
run, and say whether the kept ones were used)."""

import __future__

import ast
import importlib
import inspect
import json
import linecache
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import removed_keys

from relaion_pipeline.core import cache
from relaion_pipeline.core.settings import Settings
from relaion_pipeline.demo_data import demo
from relaion_pipeline.stages import pipeline, variants
from relaion_pipeline.validation import checks

NAME = "joined/part-00000"
RECORDED = (
    cache.INDEX,
    cache.CANDIDATES,
    cache.IMAGE_HITS,
    cache.SIDECAR_COUNTS,
    cache.INPUT_COUNTS,
    cache.INPUT_DIGEST,
    cache.REMOVAL_KEYS,
)
INDEX, CANDIDATES, IMAGE_HITS, SIDECAR, COUNTS, DIGEST, KEYS, NEAR = (
    "index",
    "candidates",
    "image hits",
    "sidecar counts",
    "input counts",
    "input digest",
    "removal-list keys",
    "near matches",
)
LABEL = dict(zip(RECORDED, (INDEX, CANDIDATES, IMAGE_HITS, SIDECAR, COUNTS, DIGEST, KEYS), strict=True))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """The demo's shard of the joined family, matched once: every artifact is in the cache."""
    root = tmp_path_factory.mktemp("cache")
    planted = demo.generate(root / "in", shards=1, rows=400, seed=5)
    settings = Settings.layout(root / "in", root / "out")
    pipeline.build_blocklist(settings)
    _stages(settings)
    return settings, planted[NAME]


class Edits:
    """Edits of the code of functions of the package, as a new checkout would have it (each followed by what a
    new process does: the digests of code are computed again), undone by `undo`."""

    def __init__(self):
        self.done = []

    def __call__(self, name: str) -> None:
        module_name, qualname = name.split(":")
        module = importlib.import_module(f"relaion_pipeline.{module_name}")
        original = getattr(module, qualname)
        source = textwrap.dedent(inspect.getsource(getattr(original, "py_func", original)))  # numba: its Python
        body = ast.parse(source).body[0].body[0].lineno  # the first statement of the function's body
        lines = source.splitlines()
        indent = lines[body - 1][: len(lines[body - 1]) - len(lines[body - 1].lstrip())]
        lines.insert(body - 1, f"{indent}_edited = None")
        filename = f"<edited {name}>"
        text = "\n".join(lines) + "\n"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        exec(compile(text, filename, "exec", flags=__future__.annotations.compiler_flag), module.__dict__)
        self.done.append((module, qualname, original))
        cache.new_process()

    def undo(self) -> None:
        for module, qualname, original in reversed(self.done):
            setattr(module, qualname, original)
        self.done.clear()
        cache.new_process()


@pytest.fixture
def edits():
    found = Edits()
    yield found
    found.undo()


def _stages(settings: Settings) -> dict:
    stats = pipeline.compute_removals(settings, NAME)
    pipeline.write_research(settings, NAME)
    pipeline.write_research_safe(settings, NAME)
    checks.check_input(settings, NAME)
    return stats


def _records(settings: Settings) -> dict:
    found = {}
    for artifact in RECORDED:
        path = cache.record_path(settings.work, NAME, artifact)
        found[artifact] = cache.fingerprint(path) if os.path.exists(path) else None
    return found


def made_again(settings: Settings) -> set[str]:
    """Run the stages; which artifacts were made (not taken from the cache)."""
    before = _records(settings)
    stats = _stages(settings)
    made = {LABEL[a] for a, fingerprint in _records(settings).items() if fingerprint != before[a]}
    if stats.near_matching.from_list is None:
        made.add(NEAR)
    return made


def _rewrite(path: str) -> None:
    """The same bytes in a new file (as a copy or a restore from backup makes it)."""
    data = Path(path).read_bytes()
    os.unlink(path)
    Path(path).write_bytes(data)


def _edit_parquet(path: str) -> None:
    """Keep the rows of a parquet file but one (an edit of a cached file by hand or a tool)."""
    table = pq.read_table(path)
    pq.write_table(table.slice(0, max(table.num_rows - 1, 0)), path)


ALL = {INDEX, CANDIDATES, IMAGE_HITS, SIDECAR, COUNTS, DIGEST, KEYS, NEAR}


def test_every_cached_artifact_is_covered_here():
    assert set(cache.ARTIFACTS) == {*RECORDED, cache.NEAR_MATCHES, cache.STAGED_SAFE}


def test_nothing_changed_nothing_is_made_again(shard):
    settings, _ = shard
    assert made_again(settings) == set()


@pytest.mark.parametrize(
    "change, made",
    [
        ("shard", {INDEX, CANDIDATES, SIDECAR, COUNTS, DIGEST, KEYS, NEAR}),
        ("sidecar", {IMAGE_HITS, SIDECAR, NEAR}),
        ("list", {CANDIDATES, IMAGE_HITS}),
        ("index file", {INDEX, CANDIDATES}),
        ("candidates file", {CANDIDATES}),
        ("image hits file", {IMAGE_HITS}),
        ("near matches file", {NEAR}),
        ("index record", {INDEX, CANDIDATES}),
        ("input counts record", {COUNTS}),
        ("research threshold", set()),
        ("keywords", {KEYS}),  # other rows are removed: the removal list's keys follow
    ],
)
def test_a_changed_input_setting_or_file_makes_exactly_what_depends_on_it_again(shard, change, made):
    settings, _ = shard
    work, sidecar = Path(settings.work) / "index", Path(settings.sidecars) / f"{NAME}.parquet"
    if change == "shard":
        _rewrite(str(Path(settings.shards) / f"{NAME}.parquet"))
    elif change == "sidecar":
        _rewrite(str(sidecar))
    elif change == "list":  # a new list version (an entry that matches nothing): the near matches are updated
        (Path(settings.blocklists) / "cache-test").mkdir(exist_ok=True)
        (Path(settings.blocklists) / "cache-test" / "domain.txt").write_text(f"{change}-{os.getpid()}.example\n")
        pipeline.build_blocklist(settings)
    elif change.endswith(" file"):
        artifact = {"index": cache.INDEX, "candidates": cache.CANDIDATES, "image hits": cache.IMAGE_HITS}
        artifact |= {"near matches": cache.NEAR_MATCHES}
        _edit_parquet(cache.path(settings.work, NAME, artifact[change.removesuffix(" file")]))
    elif change.endswith(" record"):
        artifact = cache.INDEX if change == "index record" else cache.INPUT_COUNTS
        path = Path(cache.record_path(settings.work, NAME, artifact))
        record = json.loads(path.read_text())
        if artifact is cache.INDEX:
            record["extra"]["counts"]["rows_in"] += 1
        else:
            record["value"]["counts"] = {k: v + 1 for k, v in record["value"]["counts"].items()}
        path.write_text(json.dumps(record))
    elif change == "research threshold":
        settings = Settings(**{**settings.__dict__, "research_threshold": 0.5})
    elif change == "keywords":
        words = work.parent / "keywords.txt"
        words.write_text("zebra-crossing-words\n")
        settings = Settings(**{**settings.__dict__, "keywords": str(words)})
    assert made_again(settings) == made
    assert made_again(settings) == set(), "and then it is reused"
    made_again(shard[0])  # the shard as the module's other tests find it


@pytest.mark.parametrize(
    "function, made",
    [
        ("canonical.url_sql:canonical_parts_sql", {INDEX, CANDIDATES}),  # the SQL tier the compiled build falls back on
        ("canonical.lookup_hashes:_prefix", {INDEX, CANDIDATES}),  # the compiled kernel
        ("canonical.url_sql:_canonical_udf", {INDEX, CANDIDATES}),  # the reference, for non-ASCII hosts
        ("match.index:list_keys_sql", {CANDIDATES}),
        ("match.matching:lower_hex_sql", {IMAGE_HITS}),
        ("match.near_matching:matchable", {NEAR}),
        ("lists.pdq:out_of_range_sql", {SIDECAR}),
        ("stages.input_counts:rules", {COUNTS}),
        ("validation.checks:_validated", {DIGEST}),
        ("stages.removal_keys:keys", {KEYS}),
        ("core.row_hashes:of_text", {KEYS}),  # how a LAION hash is computed
        ("publishing.report:documents", set()),  # code that makes no cached artifact
        ("lists.blocklists:read_current", set()),
    ],
)
def test_changed_code_makes_exactly_what_it_makes_again(shard, edits, function, made):
    settings, _ = shard
    edits(function)
    assert made_again(settings) == made
    assert made_again(settings) == set()
    edits.undo()
    assert made_again(settings) == made, "and again when the code is as it was"


def test_a_new_library_version_makes_everything_again(shard, monkeypatch):
    settings, _ = shard
    monkeypatch.setattr(sys.modules["duckdb"], "__version__", "0.0.0-another")
    cache.new_process()
    try:
        assert made_again(settings) == ALL
    finally:
        monkeypatch.undo()
        cache.new_process()
    assert made_again(settings) == ALL


def test_an_edited_cached_artifact_never_hides_a_listed_row(shard):
    """The index edited to lose the entries of every removed row (and its record left as it was): the rows are
    removed all the same, because the edited index is not used."""
    settings, _ = shard
    expected = removed_keys(settings, NAME)
    path = cache.path(settings.work, NAME, cache.INDEX)
    table = pq.read_table(path)
    removed = set(pq.read_table(pipeline.Work(settings.work).removals(NAME)).column("row_number").to_pylist())
    keep = [r not in removed for r in table.column("row_number").to_pylist()]
    pq.write_table(table.filter(keep), path)
    shutil.copy(path, path + ".edited")
    assert made_again(settings) == {INDEX, CANDIDATES}
    assert removed_keys(settings, NAME) == expected
    assert Path(path).read_bytes() != Path(path + ".edited").read_bytes()


@pytest.mark.parametrize("change", ["nothing", "safe threshold", "research file", "staged file", "code", "license"])
def test_the_staged_research_safe_copy_is_used_only_for_what_it_was_made_from(shard, edits, monkeypatch, change):
    settings, _ = shard
    work = pipeline.Work(settings.work)
    pipeline.compute_removals(settings, NAME)
    pipeline.write_research(settings, NAME)
    staged = work.staged_safe(NAME)[0]
    inode = os.stat(staged).st_ino
    if change == "safe threshold":
        settings = Settings(**{**settings.__dict__, "safe_threshold": 0.9})
    elif change == "research file":
        _rewrite(work.variant(pipeline.RESEARCH, NAME))
    elif change == "staged file":
        _edit_parquet(staged)
        inode = os.stat(staged).st_ino
    elif change == "code":
        edits("stages.variants:safe_keep_mask")
    elif change == "license":
        settings = Settings(**{**settings.__dict__, "license": "cc-by-4.0"})
    written = []  # research-safe written again from the shard, the staged copy not used
    original = variants.write_research_safe
    monkeypatch.setattr(variants, "write_research_safe", lambda *a: written.append(1) or original(*a))
    stats = pipeline.write_research_safe(settings, NAME)
    used = not written
    if used:
        assert os.stat(work.variant(pipeline.RESEARCH_SAFE, NAME)).st_ino == inode, "the staged file, moved"
    assert used == (change in ("nothing", "license"))
    assert not any(os.path.exists(p) for p in work.staged_safe(NAME)), "a staged copy is used once"
    fresh = pq.read_table(work.variant(pipeline.RESEARCH_SAFE, NAME))
    assert stats.rows_out == fresh.num_rows


def test_the_digest_of_code_is_the_same_in_every_process():
    """Else nothing would ever be reused by the next run (string hashing differs between processes)."""
    import subprocess

    code = "from relaion_pipeline.core import cache; print([a.code() for a in cache.ARTIFACTS])"
    found = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(found) == 1 and str([a.code() for a in cache.ARTIFACTS]) + "\n" in found
