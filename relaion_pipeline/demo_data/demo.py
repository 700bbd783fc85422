"""Deterministic generator of synthetic, harmless LAION-like demo data with planted blocklist matches.

The pipeline must be developed, tested, benchmarked and shown without touching real LAION URLs or real partner
lists. `generate` writes shards in the four schema families the pipeline reads, image-hash sidecars, partner
lists in each source's file format, and `planted.json`: the ground truth of which row keys every kind of list
entry removes in every shard (row keys only, never a URL or caption). Every host is a reserved name
(example.com/.org/.net, *.example, *.test) or a documentation IP (192.0.2/24, 198.51.100/24, 203.0.113/24);
captions are neutral phrases; the keyword rule uses the placeholder keyword list shipped with the package.

Every shard gets planted rows for each kind (images, PDQ and keywords not in the `minimal` family, which has no
sidecar and no score) plus decoys that must survive: a near-miss folder, keywords with a low score, high scores
without a keyword, a keyword inside a longer word, a PDQ entry 34 bits away, a listed PDQ hash of too low a
quality. The sidecars' PDQ hashes are digests of the synthetic image bytes standing in for perceptual hashes
(real ones come from `relaion hash-images`); PDQ entries are those hashes with some bits flipped. Up to
ORACLE_MAX_ROWS rows in all, planted.json is a brute force over every row; beyond, planted rows sit on dedicated
hosts, folders or file names, so only they can match.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relaion_pipeline.canonical.urls import lookup_expressions, parse
from relaion_pipeline.core import row_hashes
from relaion_pipeline.demo_data.demo_urls import EXTS, NAMES, QUERIES, SAFE_STYLES, Pools, render
from relaion_pipeline.lists import pdq
from relaion_pipeline.lists.kinds import (
    DOMAIN,
    IMAGE,
    IMAGE_MD5,
    IMAGE_SHA1,
    IMAGE_SHA256,
    PDQ,
    SIDECAR_EXACT,
    URL_DERIVED,
    URL_MD5,
    URL_SHA256,
    by_name,
)

FAMILIES = ("joined", "plain", "relaion", "minimal")
KINDS = (*URL_DERIVED, *IMAGE, "keyword")  # the list kinds, and the keyword rule
KEYWORDS_FILE = Path(__file__).parents[1] / "data" / "keywords.txt"
RESEARCH_THRESHOLD = 0.95  # keyword rule: punsafe above this (plain family: NSFW tag "NSFW") AND a keyword
ORACLE_MAX_ROWS = 200_000  # up to this many rows in all, planted.json is computed by checking every row
MIN_ROWS = 100
OUTPUTS = ("shards", "sidecars", "blocklists", "planted.json")
SOURCES = ("partner-a", "partner-b", "hrw-privacy", "opt-out", "pdq-partner")
PDQ_FLIPS = {PDQ.name: (12, 30), "pdq_far": (34,), "pdq_low": (0,)}  # bits an entry differs from its row's image

_WIDTHS = np.array([256, 320, 400, 480, 500, 600, 640, 736, 800, 1000, 1024, 1200, 1280, 1600, 1920, 2048])
_ASPECTS = np.array([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3])
_IMAGE_HASHES = {k: getattr(hashlib, by_name(k).digest) for k in SIDECAR_EXACT}  # image_md5: hashlib.md5, ...


def load_keywords(path: str | Path = KEYWORDS_FILE) -> list[str]:
    """The keyword list: one entry a line, `#` starts a comment, blank lines skipped."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    return [w for w in (line.split("#", 1)[0].strip() for line in lines) if w]


def keyword_regex(keywords: list[str]) -> re.Pattern[str]:
    """Case-insensitive whole-word match: not preceded or followed by a letter, digit or underscore."""
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k) for k in keywords) + r")(?!\w)", re.IGNORECASE)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# ---------------------------------------------------------------- shards and plants

_URL_ROLES = (
    ("exact_a", 2),
    ("exact_hrw", 2),
    ("md5", 2),
    ("path", 3),
    ("path_near", 1),
    ("host", 3),
    (DOMAIN.name, 3),
)
_IMAGE_ROLES = ((IMAGE_MD5.name, 2), ("image_dup", 1), (IMAGE_SHA1.name, 2), (IMAGE_SHA256.name, 2))
_IMAGE_ROLES += ((PDQ.name, 2), ("pdq_far", 1), ("pdq_low", 1))  # near copies; beyond 31 bits; listed, low quality
_KEYWORD_ROLES = (("keyword", 2), ("kw_low", 2), ("unsafe_only", 2), ("kw_substring", 1))


@dataclass
class _Shard:
    index: int
    family: str
    seed: int
    urls: list[str] | dict[int, str]  # a dict of the planted rows only once trimmed
    captions: list[str] | dict[int, str]
    punsafe: np.ndarray
    nsfw: np.ndarray
    hashes: np.ndarray | None = None
    covered: np.ndarray | None = None  # rows that have a sidecar row; None: no sidecar
    alias: dict[int, int] = field(default_factory=dict)  # row -> row whose image bytes it shares
    roles: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.family}/part-{self.index:05d}"

    @property
    def rows(self) -> int:
        return len(self.punsafe)

    def key(self, row: int) -> str:
        """The pipeline's row key: hash, SAMPLE_ID, key column, or `<shard name>:<row number>`."""
        return self.keys(np.array([row]))[0].as_py()

    def keys(self, rows: np.ndarray) -> pa.Array:
        if self.family == "joined":
            return pc.cast(pa.array(self.hashes[rows]), pa.string())
        if self.family == "plain":
            return pc.cast(pa.array(rows + self.index * 10**9), pa.string())
        if self.family == "relaion":
            digits = max(4, len(str(self.rows - 1)))
            return pc.utf8_lpad(pc.cast(pa.array(rows + self.index * 10**digits), pa.string()), 5 + digits, "0")
        return pc.binary_join_element_wise(f"{self.name}:", pc.cast(pa.array(rows), pa.string()), "")

    def image(self, row: int) -> bytes | None:
        """The synthetic image bytes behind the sidecar hashes; None when the row has no sidecar row."""
        if self.covered is None or not self.covered[row]:
            return None
        return f"synthetic-image-{self.seed}-{self.name}-{self.alias.get(row, row)}".encode()

    def pdq(self, row: int) -> tuple[str, int] | None:
        """The row's synthetic PDQ hash (a digest of its image bytes standing in for a perceptual hash) and its
        quality: 30 for the low-quality plant, 90 for the other PDQ plants, else 40-100; None without image."""
        image = self.image(row)
        if image is None:
            return None
        digest = hashlib.sha256(b"pdq:" + image).digest()
        if row in self.roles.get("pdq_low", ()):
            return digest.hex(), 30
        planted = row in self.roles.get(PDQ.name, ()) or row in self.roles.get("pdq_far", ())
        return digest.hex(), 90 if planted else 40 + digest[0] % 61

    def unsafe(self, row: int) -> bool:
        if self.family == "plain":
            return self.nsfw[row] == "NSFW"
        return self.family != "minimal" and bool(self.punsafe[row] > RESEARCH_THRESHOLD)

    def candidates(self) -> list[int]:
        """The planted rows, decoys included: by construction the only rows any entry can match."""
        return sorted({row for rows in self.roles.values() for row in rows})

    def trim(self) -> None:
        """Keep only the URLs and captions of the candidates (big shards are not checked row by row)."""
        self.urls, self.captions = ({r: v[r] for r in self.candidates()} for v in (self.urls, self.captions))


def _plant_urls(shard: _Shard, r: random.Random, pools: Pools, entries: dict) -> None:
    i, roles, urls = shard.index, shard.roles, shard.urls

    def fresh(row: int, host: str, dirs: str, token: bool = False) -> str:
        name = f"{r.choice(NAMES)}-{r.randrange(10, 10**7)}" + (f"-s{i}r{row}" if token else "")
        scheme, filename, query = r.choice(("http", "https")), f"{name}.{r.choice(EXTS)}", r.choice(QUERIES)
        return render(r.choice(SAFE_STYLES), r, scheme, host, dirs, filename, query)

    # exact plants: a token in the file name that no other row has makes the exact expression unique
    for role, source, kind, category, digest in (
        ("exact_a", "partner-a", URL_SHA256.name, "csam", _sha256),
        ("exact_hrw", "hrw-privacy", URL_SHA256.name, "privacy", _sha256),
        ("md5", "partner-b", URL_MD5.name, "csam", _md5),
    ):
        for row in roles[role]:
            urls[row] = fresh(row, r.choice(pools.hosts), r.choice(pools.dirs), token=True)
            entries[source, kind].append((digest(lookup_expressions(urls[row])[0]), category))
    # path plant: a folder no other row uses on a shared host, plus a near-miss folder on the same host
    host, top = r.choice(pools.hosts), f"collection-{i}-1"
    for role, folder in (("path", top), ("path_near", f"{top}-old")):
        for row in roles[role]:
            urls[row] = fresh(row, host, f"/{folder}" + r.choice(pools.dirs))
    entries["partner-a", URL_SHA256.name].append((_sha256(f"{parse(urls[roles['path'][0]]).host}/{top}/"), "csam"))
    # host plant and opt-out domain: dedicated hosts, subdomains included
    blocked, optout = f"blocked-host-{i}-1.example", f"optout-{i}-1.example.net"
    for role, base, subs in (
        ("host", blocked, ("", "img.", "cdn.static.")),
        (DOMAIN.name, optout, ("", "cdn.", "img2.cdn.")),
    ):
        for row, sub in zip(roles[role], subs, strict=True):
            urls[row] = fresh(row, sub + base, r.choice(pools.dirs))
    entries["partner-a", URL_SHA256.name].append((_sha256(f"{blocked}/"), "csam"))
    entries["opt-out", DOMAIN.name].append((optout, "opt-out"))


def _plant_images(shard: _Shard, rng: np.random.Generator, entries: dict) -> None:
    roles = shard.roles
    shard.alias[roles["image_dup"][0]] = roles[IMAGE_MD5.name][0]  # the same image re-hosted at another URL
    shard.covered = rng.random(shard.rows) >= 0.05  # ~5% failed downloads have no sidecar row
    shard.covered[[row for role, _ in _IMAGE_ROLES for row in roles[role]]] = True
    for kind, source in (
        (IMAGE_MD5.name, "partner-a"),
        (IMAGE_SHA1.name, "partner-b"),
        (IMAGE_SHA256.name, "partner-b"),
    ):
        for row in roles[kind]:
            entries[source, kind].append((_IMAGE_HASHES[kind](shard.image(row)).hexdigest(), "csam"))
    for role, flips in PDQ_FLIPS.items():
        for j, row in enumerate(roles[role]):
            value = bytearray(bytes.fromhex(shard.pdq(row)[0]))
            for bit in rng.choice(256, flips[j % len(flips)], replace=False).tolist():
                value[bit // 8] ^= 1 << (bit % 8)
            entries["pdq-partner", PDQ.name].append((value.hex(), "csam"))


def _with_keyword(r: random.Random, caption: str, keyword: str) -> str:
    word = r.choice((keyword, keyword.upper(), keyword.title()))
    words = (caption or "photo").split(" ")
    at = r.randint(0, len(words))
    return " ".join([*words[:at], word + r.choice(("", ",", ":")) if at < len(words) else word, *words[at:]])


def _plant_keywords(shard: _Shard, r: random.Random, keywords: list[str]) -> None:
    """Keyword rows and decoys: only a whole-word keyword AND a score above the threshold removes a row."""
    plain = [k for k in keywords if k[-1].isalnum()]
    for role, score, tag in (("keyword", 0.97, "NSFW"), ("kw_low", 0.5, "UNSURE"), ("unsafe_only", 0.99, "NSFW")):
        for j, row in enumerate(shard.roles[role]):
            if role != "unsafe_only":
                shard.captions[row] = _with_keyword(r, shard.captions[row], keywords[j % len(keywords)])
            shard.punsafe[row], shard.nsfw[row] = score, tag
    for j, row in enumerate(shard.roles["kw_substring"]):  # a keyword inside a longer word is no whole word
        shard.captions[row] = _with_keyword(r, shard.captions[row], plain[j % len(plain)] + "s") if plain else ""
        shard.punsafe[row], shard.nsfw[row] = 0.99, "NSFW"


def _scores(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    u = rng.random(n)
    punsafe = np.where(u < 0.80, 0.2 * rng.beta(0.8, 3.0, n), rng.uniform(0.2, 0.45, n))
    punsafe = np.where(u < 0.94, punsafe, np.where(u < 0.985, rng.uniform(0.45, 0.95, n), rng.uniform(0.951, 1, n)))
    width = np.where(rng.random(n) < 0.7, rng.choice(_WIDTHS, n), rng.integers(64, 4000, n))
    return {
        "similarity": rng.uniform(0.25, 0.45, n),
        "punsafe": punsafe.astype(np.float32),  # ~80% < 0.2, ~6% > 0.45, ~1.5% > 0.95
        "pwatermark": rng.beta(0.6, 2.5, n).astype(np.float32),
        "width": width.astype(np.int64),
        "height": np.maximum(16, np.rint(width / rng.choice(_ASPECTS, n))).astype(np.int64),
        "nsfw": rng.choice(np.array(["UNLIKELY", "UNSURE", "NSFW"], dtype=object), n, p=(0.9, 0.07, 0.03)),
        "size_null": rng.random(n) < 0.02,
        "license_null": rng.random(n) < 0.03,
        "index_gap": rng.random(n) < 0.05,
    }


def _unique_hashes(urls: list[str], captions: list[str]) -> np.ndarray:
    """The LAION hash of every row, after making (url, caption) unique so that row keys are unique."""
    hashes = np.array([row_hashes.of_text(u, t) for u, t in zip(urls, captions, strict=True)])
    while True:
        order = np.argsort(hashes, kind="stable")
        later = order[1:][hashes[order[1:]] == hashes[order[:-1]]].tolist()  # repeats after the first
        if not later:
            return hashes
        for row in later:
            captions[row] += f" ({row})"
            hashes[row] = row_hashes.of_text(urls[row], captions[row])


def _table(shard: _Shard, cols: dict[str, np.ndarray]) -> pa.Table:
    n, family = shard.rows, shard.family
    if family == "minimal":
        index = pd.Index(np.cumsum(1 + cols["index_gap"]) + 2 * shard.index * n, dtype="int64")  # with gaps
        frame = pd.DataFrame({"URL": shard.urls, "TEXT": shard.captions}, index=index)
        schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("__index_level_0__", pa.int64())])
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=True)
    url, text, similarity = pa.array(shard.urls, pa.string()), pa.array(shard.captions, pa.string()), cols["similarity"]
    width, height, pwatermark = cols["width"], cols["height"], cols["pwatermark"]
    if family == "joined":
        return pa.table({
            "URL": url, "TEXT": text, "WIDTH": width, "HEIGHT": height, "similarity": similarity,
            "hash": shard.hashes, "punsafe": shard.punsafe, "pwatermark": pwatermark,
        })  # fmt: skip
    if family == "plain":
        null = cols["size_null"]
        return pa.table({
            "SAMPLE_ID": np.arange(n, dtype=np.int64) + shard.index * 10**9, "URL": url, "TEXT": text,
            "HEIGHT": pa.array(height.astype(np.float64), mask=null),
            "WIDTH": pa.array(width.astype(np.float64), mask=null),
            "LICENSE": pa.array(np.full(n, "?", dtype=object), pa.string(), mask=cols["license_null"]),
            "NSFW": pa.array(shard.nsfw, pa.string()), "similarity": similarity,
        })  # fmt: skip
    return pa.table({
        "key": shard.keys(np.arange(n)), "hash": shard.hashes, "url": url, "caption": text,
        "similarity": similarity, "punsafe": shard.punsafe, "pwatermark": pwatermark,
        "original_width": width, "original_height": height,
    })  # fmt: skip


def _sidecar(shard: _Shard, rng: np.random.Generator) -> pa.Table:
    """key, md5, sha1, sha256, pdq, pdq_quality of the covered rows, shuffled: sidecars are joined on the key,
    not row order."""
    rows = rng.permutation(np.flatnonzero(shard.covered))
    source = rows.copy()
    for row, same in shard.alias.items():
        source[rows == row] = same
    prefix = f"synthetic-image-{shard.seed}-{shard.name}-"
    images = [f"{prefix}{row}".encode() for row in source.tolist()]  # as in _Shard.image
    columns = {"key": shard.keys(rows)}
    for column, function in ((by_name(kind).sidecar_column, f) for kind, f in _IMAGE_HASHES.items()):
        data = b"".join([function(image).digest() for image in images]).hex().encode("ascii")
        offsets = np.arange(0, len(data) + 1, 2 * function().digest_size, dtype=np.int32)
        columns[column] = pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(data))
    perceptual = [shard.pdq(row) for row in rows.tolist()]
    columns[PDQ.sidecar_column] = pa.array([h for h, _ in perceptual], pa.string())
    columns["pdq_quality"] = pa.array([q for _, q in perceptual], pa.int16())
    return pa.table(columns)


def _build_shard(out: Path, i: int, rows: int, seed: int, pools: Pools, keywords: list[str], entries: dict) -> _Shard:
    family = FAMILIES[i % len(FAMILIES)]
    rng, r = np.random.default_rng([seed, i]), random.Random(seed * 1_000_003 + i)
    urls = pools.urls(rng, r, rows)
    captions = [pools.captions[j] for j in rng.integers(0, len(pools.captions), rows).tolist()]
    for row in np.flatnonzero(rng.random(rows) < 0.015).tolist():
        captions[row] = ""
    cols = _scores(rng, rows)
    shard = _Shard(i, family, seed, urls, captions, cols["punsafe"], cols["nsfw"])
    plan = list(_URL_ROLES) + ([] if family == "minimal" else [*_IMAGE_ROLES, *_KEYWORD_ROLES])
    picked = rng.choice(rows, sum(k for _, k in plan), replace=False).tolist()
    for role, k in plan:
        shard.roles[role], picked = sorted(picked[:k]), picked[k:]
    _plant_urls(shard, r, pools, entries)
    if family != "minimal":
        _plant_images(shard, rng, entries)
        _plant_keywords(shard, r, keywords)
    else:  # images hashed too (a run needs every shard's sidecar when the lists hold image hashes), none listed
        shard.covered = rng.random(shard.rows) >= 0.05
    shard.hashes = _unique_hashes(urls, captions)
    _write_parquet(_table(shard, cols), out / "shards" / f"{shard.name}.parquet")
    if shard.covered is not None:
        _write_parquet(_sidecar(shard, rng), out / "sidecars" / f"{shard.name}.parquet")
    return shard


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


# ---------------------------------------------------------------- partner lists and ground truth


def _noise(rng: np.random.Generator, n: int, size: int) -> list[str]:
    data = rng.bytes(n * size).hex()
    return [data[j : j + 2 * size] for j in range(0, len(data), 2 * size)]


_NOISE = {  # source -> (kind, share of the noise count, category)
    "partner-a": ((URL_SHA256, 0.8, "csam"), (IMAGE_MD5, 0.2, "csam")),
    "partner-b": ((URL_MD5, 1, "csam"), (IMAGE_SHA1, 0.25, "csam"), (IMAGE_SHA256, 0.25, "csam")),
    "hrw-privacy": ((URL_SHA256, 0.25, "privacy"),),
    "pdq-partner": ((PDQ, 0.25, "csam"),),
}


def _write_blocklists(root: Path, entries: dict, rng: np.random.Generator, rows: int) -> dict:
    """One folder per source in its own format, planted entries hidden among noise that matches nothing.

    Returns the number of distinct (lower-cased) values per source and kind, as a list parser should count.
    """
    lists = {
        s: [(k, v, c) for (source, k), got in sorted(entries.items()) if source == s for v, c in got] for s in SOURCES
    }
    for source, noise in _NOISE.items():
        for kind, share, category in noise:
            size = kind.hex_digits // 2  # bytes
            lists[source] += [(kind.name, v, category) for v in _noise(rng, int(max(200, rows // 10) * share), size)]
    lists["opt-out"] += [(DOMAIN.name, f"optout-x{k}.example.net", "opt-out") for k in range(20)]
    counts = {}
    for source, got in lists.items():
        lists[source] = [got[j] for j in rng.permutation(len(got)).tolist()]
        counts[source] = dict(sorted(Counter(kind for kind, _ in {(k, v) for k, v, _ in got}).items()))
    a, b = lists["partner-a"], lists["partner-b"]
    for j in rng.choice(len(a), 4, replace=False).tolist():  # partners do not agree on hex case...
        a[j] = (a[j][0], a[j][1].upper(), a[j][2])
    lines = [",".join(row) for row in a]
    lines.insert(len(lines) // 3, lines[0])  # ...send duplicates...
    lines.insert(len(lines) // 2, "# --- second batch ---")  # ...and comments anywhere
    files = {
        "partner-a/hashes.csv": ["# partner-a hash list (synthetic demo data)", "kind,value,category", *lines],
        f"partner-b/{URL_MD5.name}.txt": [
            "# partner-b: MD5 of URL lookup expressions",
            *(v for k, v, _ in b if k == URL_MD5.name),
        ],
        "hrw-privacy/list.tsv": ["kind\tvalue\tcategory", *("\t".join(row) for row in lists["hrw-privacy"])],
        "opt-out/domains.csv": ["kind,value,category", *(",".join(row) for row in lists["opt-out"])],
        "pdq-partner/pdq.csv": ["kind,value,category", *(",".join(row) for row in lists["pdq-partner"])],
        "pdq-partner/source.json": ['{"pdq_distance": 31}'],
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(text) + "\n", encoding="utf-8", newline="\n")
    images = [dict(zip(("kind", "value", "category"), row, strict=True)) for row in b if row[0] != URL_MD5.name]
    _write_parquet(pa.Table.from_pylist(images), root / "partner-b" / "images.parquet")
    return counts


def _near_rows(shard: _Shard, rows: list[int], entries: set[str]) -> set[int]:
    """Brute force: the rows whose PDQ hash (of quality >= 50) is within 31 bits of an entry."""
    hashed = [(row, *h) for row in rows if (h := shard.pdq(row)) is not None and h[1] >= pdq.MIN_QUALITY]
    if not hashed or not entries:
        return set()
    listed = sorted(entries)
    found = pdq.brute_force(
        pdq.to_words([h for _, h, _ in hashed]),
        pdq.to_words(listed),
        np.full(len(listed), pdq.DEFAULT_DISTANCE, dtype=np.int32),
    )
    return {hashed[q][0] for q, _, _ in found}


def _matches(
    shard: _Shard, rows: list[int], sets: dict[str, set[str]], pattern: re.Pattern[str]
) -> dict[str, list[str]]:
    """Brute force: the row keys among `rows` that each kind of entry removes."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    near = _near_rows(shard, rows, sets[PDQ.name])
    for row in rows:
        url, image = shard.urls[row], shard.image(row)
        expressions = lookup_expressions(url)
        labels = parse(url).host.split(".") if expressions else []
        hit = {
            URL_SHA256.name: any(_sha256(e) in sets[URL_SHA256.name] for e in expressions),
            URL_MD5.name: any(_md5(e) in sets[URL_MD5.name] for e in expressions),
            DOMAIN.name: any(".".join(labels[k:]) in sets[DOMAIN.name] for k in range(len(labels))),
            "keyword": shard.unsafe(row) and bool(pattern.search(shard.captions[row])),
            PDQ.name: row in near,
        }
        for kind, function in _IMAGE_HASHES.items():
            hit[kind] = image is not None and function(image).hexdigest() in sets[kind]
        for kind in (kind for kind, matched in hit.items() if matched):
            found[kind].append(shard.key(row))
    return {kind: sorted(keys) for kind, keys in found.items()}


def generate(out: str | Path, shards: int = 4, rows: int = 5000, seed: int = 0, list_rows: int | None = None) -> dict:
    """Write OUT/shards/, OUT/sidecars/, OUT/blocklists/ and OUT/planted.json; return the planted dict.

    The lists' noise (entries that match nothing) is sized for shards of `rows` rows, or of `list_rows` rows:
    with one `list_rows`, shards of different sizes get lists of the same size (and the same noise), as a
    shard's memory is measured apart from the lists'."""
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing:
        raise ValueError(f"{out}: already holds {', '.join(existing)}; demo data is only written to a fresh folder")
    if shards < 1 or rows < MIN_ROWS:
        raise ValueError(f"need shards >= 1 and rows >= {MIN_ROWS} (got shards={shards}, rows={rows})")
    keywords, entries = load_keywords(), defaultdict(list)
    pools = Pools.build(seed, rows, keyword_regex(keywords))
    full = rows * shards <= ORACLE_MAX_ROWS  # else only planted rows can match, by construction
    built = []
    for i in range(shards):
        built.append(_build_shard(out, i, rows, seed, pools, keywords, entries))
        if not full:
            built[-1].trim()
    counts = _write_blocklists(out / "blocklists", entries, np.random.default_rng([seed, 2 * 10**6]), list_rows or rows)
    sets = {kind: {v for (_, k), got in entries.items() if k == kind for v, _ in got} for kind in KINDS}
    planted: dict = {"_entries": counts}
    for shard in built:
        check = range(rows) if full else shard.candidates()
        planted[shard.name] = _matches(shard, list(check), sets, keyword_regex(keywords))
    (out / "planted.json").write_text(json.dumps(planted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return planted
