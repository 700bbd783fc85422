"""Synthetic URLs and captions for the demo data: reserved hosts (example.com/.org/.net, *.example, *.test)
and documentation IPs, LAION-like folders and file names, the irregular forms canonicalization must handle
(upper case, ports, escapes, non-ASCII, dot segments, user info, IP encodings, whitespace, ...), and neutral
captions. `demo` draws shards from these pools.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

_DOC_NETS = ("192.0.2", "198.51.100", "203.0.113")
_BASES = ("example.com", "example.org", "example.net", "example", "test")
_BRANDS = "sunny cedar maple pixel atlas nova lumen polar coral amber willow orbit granite cobalt".split()
_SUBS = "img img3 cdn cdn-42 static media images www photos i s3 assets eu-west shop blog files thumbs".split()
_PUNY = ("xn--bcher-kva", "xn--caf-dma", "xn--mnchen-3ya", "xn--r8jz45g")
_DIRS = "photos images uploads wp-content media assets catalog products gallery blog files static".split()
_DIRS += "thumbs large originals content news travel recipes".split()
_WORDS = "summer beach red bicycle lighthouse vintage poster garden kitchen mountain river sofa lamp".split()
_WORDS += "teapot sunset forest harbor autumn wooden table blue door city skyline coffee mug print".split()
NAMES = [f"{a}-{b}" for a in _WORDS for b in _WORDS]
EXTS, EXT_P = ("jpg", "png", "webp", "gif"), (0.6, 0.2, 0.15, 0.05)
QUERIES, QUERY_P = ("", "?w=600&h=400", "?width=1200", "?v=2", "?fit=crop&q=80"), (0.88, 0.05, 0.03, 0.02, 0.02)
_TAILS = [(e, q) for e in EXTS for q in QUERIES]  # file extension and query of a URL
_TAIL_P = np.outer(EXT_P, QUERY_P).ravel()
_NON_ASCII = ("café", "日本", "straße", "crème-brûlée", "caf%C3%A9", "東京", "jalapeño")
_STYLES = ("plain", "upper_host", "port", "fragment", "escape", "non_ascii", "double_slash", "dot_segments")
_STYLES += ("trailing_dot", "userinfo", "ip", "missing_path", "long", "whitespace", "schemeless")
_STYLE_P = np.array([70, 3, 3, 3, 4, 4, 2, 2, 2, 1.5, 2, 1, 1, 0.5, 0.5]) / 99.5
SAFE_STYLES = tuple(s for s in _STYLES if s not in ("ip", "missing_path"))  # keep the host and the path

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
_TEMPLATE_P = np.array([14, 8, 8, 8, 8, 6, 6, 5, 6, 5, 6, 2, 2, 2, 2, 1, 2]) / 91


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


def render(style: str, r: random.Random, scheme: str, host: str, dirs: str, filename: str, query: str) -> str:
    """A URL in one style. All styles but `ip` keep the canonical host; all keep the directories as a prefix."""
    if style == "upper_host":
        host, scheme = (host.upper() if r.random() < 0.5 else host.title()), r.choice((scheme, scheme.upper()))
    elif style == "port":
        host += r.choice((":8080", ":443", ":8000", ":80"))
    elif style == "fragment":
        query += "#" + r.choice(("top", "gallery", "section-2", "main-image", ""))
    elif style == "escape":
        a, b = filename.replace("-", "%20"), filename.replace("-", "%2F", 1)
        filename = r.choice((a, b, "100%25-" + filename, filename.replace("-", "%2d")))
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
class Pools:
    """Hosts, directories and captions shared by all shards, so values repeat as in real data."""

    hosts: list[str]
    weights: np.ndarray  # Zipf-like: a few hosts hold many rows
    dirs: list[str]
    captions: list[str]

    @classmethod
    def build(cls, seed: int, rows: int, keywords: re.Pattern[str]) -> Pools:
        r, rng = random.Random(seed), np.random.default_rng([seed, 10**6])
        hosts = _host_pool(r, max(40, rows // 25))
        weights = 1.0 / np.arange(1, len(hosts) + 1) ** 0.9
        depths = (0, 1, 2, 2, 3, 3, 4)
        dirs = ["".join("/" + _dir_segment(r) for _ in range(r.choice(depths))) for _ in range(max(60, rows // 40))]
        n = min(100_000, max(2_000, rows // 10))
        picks = [rng.integers(0, len(v), n).tolist() for v in (_ADJ, _NOUN, _PREP, _PLACE, _BRANDS)]
        captions = [
            _TEMPLATES[t].format(a=_ADJ[a], n=_NOUN[b], p=_PREP[c], l=_PLACE[d], b=_BRANDS[e].title())
            for t, a, b, c, d, e in zip(rng.choice(len(_TEMPLATES), n, p=_TEMPLATE_P).tolist(), *picks, strict=True)
        ]
        captions = [c for c in captions if not keywords.search(c)]  # only planted rows hold a keyword
        return cls(hosts, weights / weights.sum(), dirs, captions)

    def urls(self, rng: np.random.Generator, r: random.Random, n: int) -> list[str]:
        host = rng.choice(len(self.hosts), n, p=self.weights).tolist()
        https = (rng.random(n) < 0.8).tolist()
        dirs, name = rng.integers(0, len(self.dirs), n).tolist(), rng.integers(0, len(NAMES), n).tolist()
        number, tail = rng.integers(10, 10**7, n).tolist(), rng.choice(len(_TAILS), n, p=_TAIL_P).tolist()
        prefixes = [f"{s}://{h}" for h in self.hosts for s in ("http", "https")]
        urls = [
            f"{prefixes[2 * h + s]}{self.dirs[d]}/{NAMES[a]}-{k}.{_TAILS[t][0]}{_TAILS[t][1]}"
            for h, s, d, a, k, t in zip(host, https, dirs, name, number, tail, strict=True)
        ]
        style = rng.choice(len(_STYLES), n, p=_STYLE_P)
        for i in np.flatnonzero(style).tolist():  # the ~30% irregular URLs
            ext, query = _TAILS[tail[i]]
            scheme, filename = ("https" if https[i] else "http"), f"{NAMES[name[i]]}-{number[i]}.{ext}"
            urls[i] = render(_STYLES[style[i]], r, scheme, self.hosts[host[i]], self.dirs[dirs[i]], filename, query)
        return urls
