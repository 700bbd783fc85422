"""Deterministic generator of synthetic, harmless LAION-like demo data with planted blocklist matches.

The pipeline must be developed, tested, benchmarked and shown without touching real LAION URLs or real partner
lists. `generate` writes shards in the four schema families the pipeline reads, image-hash sidecars, partner
lists in each source's file format, and `planted.json`: the ground truth of which row keys every kind of list
entry removes in every shard (row keys only, never a URL or caption). Every host is a reserved name
(example.com/.org/.net, *.example, *.test) or a documentation IP (192.0.2/24, 198.51.100/24, 203.0.113/24);
captions are neutral phrases; the keyword rule uses the placeholder keyword list shipped with the package.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import mmh3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relaion_pipeline.urls import lookup_expressions, parse

FAMILIES = ("joined", "plain", "relaion", "minimal")
KINDS = ("url_sha256", "url_md5", "domain", "image_md5", "image_sha1", "image_sha256", "keyword")
KEYWORDS_FILE = Path(__file__).parent / "data" / "keywords.txt"
RESEARCH_THRESHOLD = 0.95  # keyword rule: punsafe above this (or NSFW tag "NSFW") and a keyword in the caption
ORACLE_MAX_ROWS = 200_000  # up to this many rows in all, planted.json is checked against every row
MIN_ROWS = 100
OUTPUTS = ("shards", "sidecars", "blocklists", "planted.json")

_DOC_NETS = ("192.0.2", "198.51.100", "203.0.113")
_BASES = ("example.com", "example.org", "example.net", "example", "test")
_BRANDS = "sunny cedar maple pixel atlas nova lumen polar coral amber willow orbit granite cobalt".split()
_SUBS = "img img3 cdn cdn-42 static media images www photos i s3 assets eu-west shop blog files thumbs".split()
_PUNY = ("xn--bcher-kva", "xn--caf-dma", "xn--mnchen-3ya", "xn--r8jz45g")
_DIRS = "photos images uploads wp-content media assets catalog products gallery blog files static".split()
_DIRS += "thumbs large originals content news travel recipes".split()
_WORDS = "summer beach red bicycle lighthouse vintage poster garden kitchen mountain river sofa lamp".split()
_WORDS += "teapot sunset forest harbor autumn wooden table blue door city skyline coffee mug print".split()
_EXTS, _EXT_P = ("jpg", "png", "webp", "gif"), (0.6, 0.2, 0.15, 0.05)
_QUERIES, _QUERY_P = ("", "?w=600&h=400", "?width=1200", "?v=2", "?fit=crop&q=80"), (0.88, 0.05, 0.03, 0.02, 0.02)
_NON_ASCII = ("café", "日本", "straße", "crème-brûlée", "caf%C3%A9", "東京", "jalapeño")
_STYLES = ("plain", "upper_host", "port", "fragment", "escape", "non_ascii", "double_slash", "dot_segments")
_STYLES += ("trailing_dot", "userinfo", "ip", "missing_path", "long", "whitespace", "schemeless")
_STYLE_P = np.array([70, 3, 3, 3, 4, 4, 2, 2, 2, 1.5, 2, 1, 1, 0.5, 0.5]) / 99.5
_SAFE_STYLES = tuple(s for s in _STYLES if s not in ("ip", "missing_path"))  # keep the host and the path

_ADJ = "red blue green vintage modern rustic wooden small large bright quiet colorful old minimalist".split()
_ADJ += "cozy sunny snowy golden striped handmade ceramic glass white yellow abstract classic misty".split()
_NOUN = "bicycle lighthouse teapot armchair mountain river bridge lamp backpack sofa guitar sailboat".split()
_NOUN += "cupcake notebook garden kitchen cathedral tractor umbrella clock sunflower harbor desk canoe".split()
_PLACE = "wall beach table hill street window lake field shelf market rooftop meadow porch pier".split()
_PREP = ("on a", "by the", "near a", "under a", "in front of a", "beside a")
_TEMPLATES = (
    "{a} {n} {p} {l}", "vintage poster of a {n}", "{a} {n} stock photo", "close-up of a {a} {n}",
    "{n} {p} {l} at sunset", "watercolor painting of a {n} {p} {l}", "{a} {n} icon, vector illustration",
    "How to draw a {a} {n}", "{a} {n} - A4 print", "Set of 4 {a} {n} stickers", "{n} | {b} shop",
    "Café {n} in the old town", "{n} im Schnee – Postkarte", "日本の{n} ({a})", "Ölgemälde: {a} {n}",
    "🌅 {a} {n} {p} {l}", "paisaje con {n} y {l}",
)  # fmt: skip
_TEMPLATE_P = np.array([14, 8, 8, 8, 8, 6, 6, 5, 6, 5, 6, 2, 2, 2, 2, 1, 2], dtype=float)
_WIDTHS = np.array([256, 320, 400, 480, 500, 600, 640, 736, 800, 1000, 1024, 1200, 1280, 1600, 1920, 2048])
_ASPECTS = np.array([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3])


def load_keywords(path: str | Path = KEYWORDS_FILE) -> list[str]:
    """The keyword list: one entry a line, `#` starts a comment, blank lines skipped."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    return [w for w in (line.split("#", 1)[0].strip() for line in lines) if w]


def keyword_regex(keywords: list[str]) -> re.Pattern[str]:
    """Case-insensitive whole-word match: not preceded or followed by a letter, digit or underscore."""
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k) for k in keywords) + r")(?!\w)", re.IGNORECASE)


def _sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _md5(data: str | bytes) -> str:
    return hashlib.md5(data.encode() if isinstance(data, str) else data).hexdigest()


_IMAGE_HASHES = {"image_md5": hashlib.md5, "image_sha1": hashlib.sha1, "image_sha256": hashlib.sha256}


# ---------------------------------------------------------------- URLs


def _doc_ip(r: random.Random, encoded: bool) -> str:
    """A documentation-range IPv4 host, optionally in one of the other encodings browsers accept."""
    octets = [int(x) for x in r.choice(_DOC_NETS).split(".")] + [r.randint(1, 254)]
    value = int.from_bytes(bytes(octets), "big")
    forms = [".".join(map(str, octets)), str(value), f"0x{value:08X}", ".".join(f"0{o:o}" for o in octets)]
    return r.choice(forms) if encoded else forms[0]


def _host_pool(r: random.Random, n: int) -> list[str]:
    hosts: dict[str, None] = {}
    while len(hosts) < n:
        x = r.random()
        if x < 0.02:
            hosts[_doc_ip(r, encoded=False)] = None
            continue
        brand = r.choice(_PUNY) if x < 0.03 else f"{r.choice(_BRANDS)}{r.choice(('', '-'))}{r.choice(_WORDS)}"
        if r.random() < 0.5:
            brand += str(r.randint(1, 999))
        subs = r.sample(_SUBS, r.choice((0, 0, 1, 1, 1, 2, 3)))
        hosts[".".join([*subs, brand, r.choice(_BASES)])] = None
    return list(hosts)


def _dir_segment(r: random.Random) -> str:
    x = r.random()
    if x < 0.5:
        return r.choice(_DIRS)
    if x < 0.7:
        return f"{r.randint(2012, 2024)}/{r.randint(1, 12):02d}"
    if x < 0.8:
        return f"{r.choice((300, 600, 1200))}x{r.choice((200, 400, 800))}"
    return f"{r.getrandbits(r.choice((32, 64, 128))):x}"


def _dir_pool(r: random.Random, n: int) -> list[str]:
    return ["".join("/" + _dir_segment(r) for _ in range(r.choice((0, 1, 2, 2, 3, 3, 4)))) for _ in range(n)]


def _render(style: str, r: random.Random, scheme: str, host: str, dirs: str, filename: str, query: str) -> str:
    """One URL in a given style; every style but `ip` keeps the canonical host, every one keeps the dirs."""
    if style == "upper_host":
        host, scheme = (host.upper() if r.random() < 0.5 else host.title()), r.choice((scheme, scheme.upper()))
    elif style == "port":
        host += r.choice((":8080", ":443", ":8000", ":80"))
    elif style == "fragment":
        query += "#" + r.choice(("top", "gallery", "section-2", "main-image", ""))
    elif style == "escape":
        filename = r.choice(
            (
                filename.replace("-", "%20"),
                filename.replace("-", "%2F", 1),
                "100%25-" + filename,
                filename.replace("-", "%2d"),
            )
        )
    elif style == "non_ascii":
        dirs += "/" + r.choice(_NON_ASCII)
    elif style == "dot_segments":
        dirs += r.choice(("/.", "/tmp/..", "/./x/.."))
    elif style == "trailing_dot":
        host += r.choice((".", ".."))
    elif style == "userinfo":
        host = r.choice(("user", "guest:secret", "me%40home")) + "@" + host
    elif style == "ip":
        host = _doc_ip(r, encoded=True)
    elif style == "missing_path":
        return f"{scheme}://{host}"
    elif style == "long":
        dirs += "".join("/" + r.choice(_DIRS) for _ in range(r.randint(12, 16)))
        query = "?" + "&".join(f"{w}={r.getrandbits(40):x}" for w in r.sample(_WORDS, 5))
    path = dirs + "/" + filename
    if style == "double_slash":
        path = path.replace("/", "//")
    if style == "schemeless":
        return f"{host}{path}{query}"
    url = f"{scheme}://{host}{path}{query}"
    return r.choice((" ", "\t", "  ")) + url + r.choice(("", " ", "\n")) if style == "whitespace" else url


@dataclass
class _Pools:
    """Hosts, directories and captions shared by all shards, so values repeat as in real data."""

    hosts: list[str]
    weights: np.ndarray
    dirs: list[str]
    captions: list[str]

    @classmethod
    def build(cls, seed: int, rows: int) -> _Pools:
        r, rng = random.Random(seed), np.random.default_rng([seed, 10**6])
        hosts = _host_pool(r, max(40, rows // 25))
        weights = 1.0 / np.arange(1, len(hosts) + 1) ** 0.9
        n = min(250_000, max(2_000, rows // 8))
        picks = [rng.integers(0, len(v), n).tolist() for v in (_ADJ, _NOUN, _PREP, _PLACE, _BRANDS)]
        template = rng.choice(len(_TEMPLATES), n, p=_TEMPLATE_P / _TEMPLATE_P.sum()).tolist()
        captions = [
            _TEMPLATES[t].format(a=_ADJ[a], n=_NOUN[b], p=_PREP[c], l=_PLACE[d], b=_BRANDS[e].title())
            for t, a, b, c, d, e in zip(template, *picks, strict=True)
        ]
        return cls(hosts, weights / weights.sum(), _dir_pool(r, max(60, rows // 40)), captions)


def _urls(rng: np.random.Generator, r: random.Random, pools: _Pools, n: int) -> list[str]:
    host = rng.choice(len(pools.hosts), n, p=pools.weights).tolist()
    dirs = rng.integers(0, len(pools.dirs), n).tolist()
    w1, w2 = rng.integers(0, len(_WORDS), (2, n)).tolist()
    number = rng.integers(10, 10**7, n).tolist()
    ext = rng.choice(len(_EXTS), n, p=_EXT_P).tolist()
    query = rng.choice(len(_QUERIES), n, p=_QUERY_P).tolist()
    scheme = np.where(rng.random(n) < 0.8, "https", "http").tolist()
    style = rng.choice(len(_STYLES), n, p=_STYLE_P)
    parts = zip(scheme, host, dirs, w1, w2, number, ext, query, strict=True)
    urls = [
        f"{s}://{pools.hosts[h]}{pools.dirs[d]}/{_WORDS[a]}-{_WORDS[b]}-{k}.{_EXTS[e]}{_QUERIES[q]}"
        for s, h, d, a, b, k, e, q in parts
    ]
    for i in np.flatnonzero(style).tolist():
        filename = f"{_WORDS[w1[i]]}-{_WORDS[w2[i]]}-{number[i]}.{_EXTS[ext[i]]}"
        host_i, dirs_i, query_i = pools.hosts[host[i]], pools.dirs[dirs[i]], _QUERIES[query[i]]
        urls[i] = _render(_STYLES[style[i]], r, scheme[i], host_i, dirs_i, filename, query_i)
    return urls


# ---------------------------------------------------------------- shards and plants

_URL_ROLES = (("exact_a", 2), ("exact_hrw", 2), ("md5", 2), ("path", 3), ("path_near", 1), ("host", 3), ("domain", 3))
_IMAGE_ROLES = (("image_md5", 2), ("image_dup", 1), ("image_sha1", 2), ("image_sha256", 2))
_KEYWORD_ROLES = (("keyword", 2), ("kw_low", 2), ("unsafe_only", 2), ("kw_substring", 1))


@dataclass
class _Shard:
    index: int
    family: str
    name: str
    seed: int
    urls: list[str]
    captions: list[str]
    punsafe: np.ndarray
    nsfw: np.ndarray
    covered: np.ndarray | None  # rows with a sidecar row; None: no sidecar
    alias: dict[int, int] = field(default_factory=dict)  # row -> row whose image bytes it shares
    roles: dict[str, list[int]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    def candidates(self) -> list[int]:
        """The planted rows (decoys included): by construction the only rows any entry can match."""
        return sorted({row for rows in self.roles.values() for row in rows})

    def trim(self) -> None:
        """Keep only what the ground truth of the candidates needs (big shards are not fully re-checked)."""
        keep = self.candidates()
        self.urls, self.captions, self.keys = ({r: v[r] for r in keep} for v in (self.urls, self.captions, self.keys))

    def unsafe(self, row: int) -> bool:
        if self.family == "minimal":
            return False
        if self.family == "plain":
            return self.nsfw[row] == "NSFW"
        return bool(self.punsafe[row] > RESEARCH_THRESHOLD)

    def image(self, row: int) -> bytes | None:
        if self.covered is None or not self.covered[row]:
            return None
        return f"synthetic-image-{self.seed}-{self.name}-{self.alias.get(row, row)}".encode()


def _plant_urls(shard: _Shard, r: random.Random, pools: _Pools, entries: dict) -> None:
    i, roles, urls = shard.index, shard.roles, shard.urls

    def fresh(row: int, host: str, dirs: str, token: bool = False) -> str:
        name = f"{r.choice(_WORDS)}-{r.choice(_WORDS)}-{r.randrange(10, 10**7)}" + (f"-{i}{row:07d}" if token else "")
        filename = f"{name}.{r.choice(_EXTS)}"
        scheme, query = r.choice(("http", "https")), r.choice(_QUERIES)
        return _render(r.choice(_SAFE_STYLES), r, scheme, host, dirs, filename, query)

    # exact plants: a unique token in the file name makes the exact expression match only this row
    for role, source, kind, category in (
        ("exact_a", "partner-a", "url_sha256", "csam"),
        ("exact_hrw", "hrw-privacy", "url_sha256", "privacy"),
        ("md5", "partner-b", "url_md5", "csam"),
    ):
        for row in roles[role]:
            urls[row] = fresh(row, r.choice(pools.hosts), r.choice(pools.dirs), token=True)
            expression = lookup_expressions(urls[row])[0]
            entries.setdefault((source, kind), []).append(
                (_md5(expression) if kind == "url_md5" else _sha256(expression), category)
            )
    # path plant: a folder name no other row uses, on a shared host; a near-miss folder on the same host
    host, top = r.choice(pools.hosts), f"collection-{i}-1"
    for row in roles["path"]:
        urls[row] = fresh(row, host, f"/{top}" + r.choice(pools.dirs))
    for row in roles["path_near"]:
        urls[row] = fresh(row, host, f"/{top}-old" + r.choice(pools.dirs))
    entries.setdefault(("partner-a", "url_sha256"), []).append(
        (_sha256(f"{parse(urls[roles['path'][0]]).host}/{top}/"), "csam")
    )
    # host plant and opt-out domain: dedicated hosts, their subdomains included
    blocked, optout = f"blocked-host-{i}-1.example", f"optout-{i}-1.example.net"
    for row, sub in zip(roles["host"], ("", "img.", "cdn.static."), strict=True):
        urls[row] = fresh(row, sub + blocked, r.choice(pools.dirs))
    for row, sub in zip(roles["domain"], ("", "cdn.", "img2.cdn."), strict=True):
        urls[row] = fresh(row, sub + optout, r.choice(pools.dirs))
    entries[("partner-a", "url_sha256")].append((_sha256(f"{blocked}/"), "csam"))
    entries.setdefault(("opt-out", "domain"), []).append((optout, "opt-out"))


def _plant_images(shard: _Shard, rng: np.random.Generator, entries: dict) -> None:
    roles = shard.roles
    shard.alias[roles["image_dup"][0]] = roles["image_md5"][0]  # the same image re-hosted at another URL
    shard.covered = rng.random(len(shard.urls)) >= 0.05  # ~5% failed downloads have no sidecar row
    shard.covered[[row for role, _ in _IMAGE_ROLES for row in roles[role]]] = True
    for kind, source in (("image_md5", "partner-a"), ("image_sha1", "partner-b"), ("image_sha256", "partner-b")):
        for row in roles[kind]:
            digest = _IMAGE_HASHES[kind](shard.image(row)).hexdigest()
            entries.setdefault((source, kind), []).append((digest, "csam"))


def _with_keyword(r: random.Random, caption: str, keyword: str) -> str:
    word = r.choice((keyword, keyword.upper(), keyword.title()))
    words = (caption or "photo").split(" ")
    at = r.randint(0, len(words))
    return " ".join([*words[:at], word + r.choice(("", ",", ":")) if at < len(words) else word, *words[at:]])


def _plant_keywords(shard: _Shard, r: random.Random, keywords: list[str]) -> None:
    """Keyword plants and decoys: only a keyword AND a score above the research threshold removes a row."""
    plain = [k for k in keywords if k[-1].isalnum()]
    for role, score, tag in (
        ("keyword", 0.97, "NSFW"),
        ("kw_low", 0.5, "UNSURE"),
        ("unsafe_only", 0.99, "NSFW"),
        ("kw_substring", 0.99, "NSFW"),
    ):
        for j, row in enumerate(shard.roles[role]):
            if role in ("keyword", "kw_low"):
                shard.captions[row] = _with_keyword(r, shard.captions[row], keywords[j % len(keywords)])
            elif role == "kw_substring" and plain:  # the keyword inside a longer word is not a whole word
                shard.captions[row] = _with_keyword(r, shard.captions[row], plain[j % len(plain)] + "s")
            shard.punsafe[row], shard.nsfw[row] = score, tag


def _scores(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    u = rng.random(n)
    low = 0.2 * rng.beta(0.8, 3.0, n)
    punsafe = np.where(u < 0.80, low, np.where(u < 0.94, rng.uniform(0.2, 0.45, n), rng.uniform(0.45, 0.95, n)))
    punsafe = np.where(u >= 0.985, rng.uniform(0.951, 1.0, n), punsafe)
    width = np.where(rng.random(n) < 0.7, rng.choice(_WIDTHS, n), rng.integers(64, 4000, n))
    height = np.maximum(16, np.rint(width / rng.choice(_ASPECTS, n))).astype(np.int64)
    return {
        "similarity": rng.uniform(0.25, 0.45, n),
        "punsafe": punsafe.astype(np.float32),
        "pwatermark": rng.beta(0.6, 2.5, n).astype(np.float32),
        "width": width.astype(np.int64),
        "height": height,
        "nsfw": rng.choice(np.array(["UNLIKELY", "UNSURE", "NSFW"], dtype=object), n, p=(0.9, 0.07, 0.03)),
        "size_null": rng.random(n) < 0.02,
        "license_null": rng.random(n) < 0.03,
    }


def _hashes(urls: list[str], captions: list[str]) -> np.ndarray:
    return np.array([mmh3.hash64(u + t, signed=True)[0] for u, t in zip(urls, captions, strict=True)], dtype=np.int64)


def _unique_pairs(urls: list[str], captions: list[str]) -> np.ndarray:
    """The LAION hash of every row, after making (url, caption) unique so row keys are unique."""
    hashes = _hashes(urls, captions)
    while len(first := np.unique(hashes, return_index=True)[1]) < len(hashes):
        for row in np.setdiff1d(np.arange(len(hashes)), first).tolist():
            captions[row] += f" ({row})"
            hashes[row] = mmh3.hash64(urls[row] + captions[row], signed=True)[0]
    return hashes


def _table(shard: _Shard, cols: dict[str, np.ndarray], hashes: np.ndarray) -> pa.Table:
    n, i, family = len(shard.urls), shard.index, shard.family
    url, text = pa.array(shard.urls, pa.string()), pa.array(shard.captions, pa.string())
    if family == "joined":
        shard.keys = [str(h) for h in hashes.tolist()]
        names = ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark")
        values = (
            url,
            text,
            cols["width"],
            cols["height"],
            cols["similarity"],
            hashes,
            shard.punsafe,
            cols["pwatermark"],
        )
        return pa.table(dict(zip(names, values, strict=True)))
    if family == "plain":
        sample_id = np.arange(n, dtype=np.int64) + i * 10**9
        shard.keys = [str(s) for s in sample_id.tolist()]
        null = cols["size_null"]
        return pa.table({
            "SAMPLE_ID": sample_id, "URL": url, "TEXT": text,
            "HEIGHT": pa.array(cols["height"].astype(np.float64), mask=null),
            "WIDTH": pa.array(cols["width"].astype(np.float64), mask=null),
            "LICENSE": pa.array(np.full(n, "?", dtype=object), pa.string(), mask=cols["license_null"]),
            "NSFW": pa.array(shard.nsfw, pa.string()), "similarity": cols["similarity"],
        })  # fmt: skip
    if family == "relaion":
        width = max(4, len(str(n - 1)))
        shard.keys = [f"{i:05d}{row:0{width}d}" for row in range(n)]
        return pa.table({
            "key": pa.array(shard.keys, pa.string()), "hash": hashes, "url": url, "caption": text,
            "similarity": cols["similarity"], "punsafe": shard.punsafe, "pwatermark": cols["pwatermark"],
            "original_width": cols["width"], "original_height": cols["height"],
        })  # fmt: skip
    shard.keys = [f"{shard.name}:{row}" for row in range(n)]
    index = pd.Index(np.cumsum(1 + (cols["size_null"])) + 2 * i * n, dtype="int64")  # a pandas index with gaps
    frame = pd.DataFrame({"URL": shard.urls, "TEXT": shard.captions}, index=index)
    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("__index_level_0__", pa.int64())])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=True)


def _hex_column(digests: bytes, size: int) -> pa.Array:
    data = digests.hex().encode("ascii")
    offsets = np.arange(0, len(data) + 1, 2 * size, dtype=np.int32)
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


def _sidecar(shard: _Shard, rng: np.random.Generator) -> pa.Table:
    rows = rng.permutation(np.flatnonzero(shard.covered)).tolist()  # keyed by row key, not in row order
    images = [shard.image(row) for row in rows]
    columns = {"key": pa.array([shard.keys[row] for row in rows], pa.string())}
    for column, kind in (("md5", "image_md5"), ("sha1", "image_sha1"), ("sha256", "image_sha256")):
        function = _IMAGE_HASHES[kind]
        columns[column] = _hex_column(b"".join(function(b).digest() for b in images), function().digest_size)
    return pa.table(columns)


def _build_shard(out: Path, i: int, rows: int, seed: int, pools: _Pools, keywords: list[str], entries: dict) -> _Shard:
    family = FAMILIES[i % len(FAMILIES)]
    rng, r = np.random.default_rng([seed, i]), random.Random(seed * 1_000_003 + i)
    urls = _urls(rng, r, pools, rows)
    captions = [pools.captions[j] for j in rng.integers(0, len(pools.captions), rows).tolist()]
    for row in np.flatnonzero(rng.random(rows) < 0.015).tolist():
        captions[row] = ""
    cols = _scores(rng, rows)
    shard = _Shard(i, family, f"{family}/part-{i:05d}", seed, urls, captions, cols["punsafe"], cols["nsfw"], None)
    plan = list(_URL_ROLES) + ([] if family == "minimal" else [*_IMAGE_ROLES, *_KEYWORD_ROLES])
    picked = rng.choice(rows, sum(k for _, k in plan), replace=False).tolist()
    for role, k in plan:
        shard.roles[role], picked = sorted(picked[:k]), picked[k:]
    _plant_urls(shard, r, pools, entries)
    if family != "minimal":
        _plant_images(shard, rng, entries)
        _plant_keywords(shard, r, keywords)
    table = _table(shard, cols, _unique_pairs(urls, captions))
    (out / "shards" / family).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "shards" / f"{shard.name}.parquet", compression="zstd")
    if shard.covered is not None:
        (out / "sidecars" / family).mkdir(parents=True, exist_ok=True)
        pq.write_table(_sidecar(shard, rng), out / "sidecars" / f"{shard.name}.parquet", compression="zstd")
    return shard


# ---------------------------------------------------------------- partner lists and ground truth


def _noise(rng: np.random.Generator, n: int, size: int) -> list[str]:
    data = rng.bytes(n * size).hex()
    return [data[j : j + 2 * size] for j in range(0, len(data), 2 * size)]


def _write_blocklists(root: Path, entries: dict, rng: np.random.Generator, rows: int) -> dict:
    """One folder per source, each in its own format; returns distinct entries per source and kind."""
    n = max(200, rows // 10)
    rows_of = {
        source: [(k, v, c) for (s, k), got in sorted(entries.items()) if s == source for v, c in got]
        for source in ("partner-a", "partner-b", "hrw-privacy", "opt-out")
    }
    rows_of["partner-a"] += [("url_sha256", v, "csam") for v in _noise(rng, n - n // 5, 32)]
    rows_of["partner-a"] += [("image_md5", v, "csam") for v in _noise(rng, n // 5, 16)]
    rows_of["partner-b"] += [("url_md5", v, "csam") for v in _noise(rng, n, 16)]
    rows_of["partner-b"] += [("image_sha1", v, "csam") for v in _noise(rng, n // 4, 20)]
    rows_of["partner-b"] += [("image_sha256", v, "csam") for v in _noise(rng, n // 4, 32)]
    rows_of["hrw-privacy"] += [("url_sha256", v, "privacy") for v in _noise(rng, n // 4, 32)]
    rows_of["opt-out"] += [("domain", f"optout-x{k}.example.net", "opt-out") for k in range(20)]
    for source, got in rows_of.items():
        rows_of[source] = [got[j] for j in rng.permutation(len(got)).tolist()]
    counts = {s: {} for s in rows_of}
    for source, got in rows_of.items():
        for kind in sorted({k for k, _, _ in got}):
            counts[source][kind] = len({v.lower() for k, v, _ in got if k == kind})
    a = rows_of["partner-a"]
    for j in rng.choice(len(a), 4, replace=False).tolist():  # partners do not agree on hex case
        a[j] = (a[j][0], a[j][1].upper(), a[j][2])
    a.insert(len(a) // 3, a[0])  # and send duplicates
    lines = [f"{k},{v},{c}" for k, v, c in a]
    lines.insert(len(lines) // 2, "# --- batch 2 (synthetic) ---")
    header = ["# partner-a hash list: synthetic demo data, matches only generated rows", "kind,value,category"]
    _write(root / "partner-a" / "hashes.csv", [*header, *lines])
    b = rows_of["partner-b"]
    _write(
        root / "partner-b" / "url_md5.txt",
        ["# partner-b URL MD5 list (synthetic)", *(v for k, v, _ in b if k == "url_md5")],
    )
    images = [row for row in b if row[0] != "url_md5"]
    table = pa.table(
        {
            name: pa.array(list(col), pa.string())
            for name, col in zip(("kind", "value", "category"), zip(*images, strict=True), strict=True)
        }
    )
    pq.write_table(table, root / "partner-b" / "images.parquet", compression="zstd")
    _write(
        root / "hrw-privacy" / "list.tsv",
        ["kind\tvalue\tcategory", *("\t".join(row) for row in rows_of["hrw-privacy"])],
    )
    _write(root / "opt-out" / "domains.csv", ["kind,value,category", *(",".join(row) for row in rows_of["opt-out"])])
    return counts


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _matches(
    shard: _Shard, rows: list[int], sets: dict[str, set[str]], pattern: re.Pattern[str]
) -> dict[str, list[str]]:
    """Brute force: the row keys among `rows` that each kind of entry removes."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for row in rows:
        url = shard.urls[row]
        expressions = lookup_expressions(url)
        hit = {
            "url_sha256": any(_sha256(e) in sets["url_sha256"] for e in expressions),
            "url_md5": any(_md5(e) in sets["url_md5"] for e in expressions),
            "keyword": shard.unsafe(row) and bool(pattern.search(shard.captions[row])),
        }
        if expressions:
            labels = parse(url).host.split(".")
            hit["domain"] = any(".".join(labels[k:]) in sets["domain"] for k in range(len(labels)))
        image = shard.image(row)
        for kind, function in _IMAGE_HASHES.items():
            hit[kind] = image is not None and function(image).hexdigest() in sets[kind]
        for kind, matched in hit.items():
            if matched:
                found[kind].append(shard.keys[row])
    return {kind: sorted(keys) for kind, keys in found.items()}


def generate(out: str | Path, shards: int = 4, rows: int = 5000, seed: int = 0) -> dict:
    """Write OUT/shards/, OUT/sidecars/, OUT/blocklists/ and OUT/planted.json; return the planted dict."""
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing:
        raise ValueError(f"{out}: already holds {', '.join(existing)}; demo data is only written to a fresh folder")
    if shards < 1 or rows < MIN_ROWS:
        raise ValueError(f"need shards >= 1 and rows >= {MIN_ROWS} (got shards={shards}, rows={rows})")
    keywords = load_keywords()
    pools, entries = _Pools.build(seed, rows), {}
    full = rows * shards <= ORACLE_MAX_ROWS  # else only planted rows can match, by construction
    built = []
    for i in range(shards):
        built.append(_build_shard(out, i, rows, seed, pools, keywords, entries))
        if not full:
            built[-1].trim()
    counts = _write_blocklists(out / "blocklists", entries, np.random.default_rng([seed, 2 * 10**6]), rows)
    sets = {kind: set() for kind in KINDS}
    for (_source, kind), got in entries.items():
        sets[kind].update(v.lower() for v, _ in got)
    planted: dict = {"_entries": counts}
    pattern = keyword_regex(keywords)
    for shard in built:
        planted[shard.name] = _matches(shard, list(range(rows)) if full else shard.candidates(), sets, pattern)
    (out / "planted.json").write_text(json.dumps(planted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return planted
