"""URL canonicalization and lookup expressions: the reference (`urls`) against the Safe Browsing v4 spec, and the
DuckDB path (`matching`) against the reference on thousands of generated URLs."""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relaion_pipeline.canonical import canonical_kernel, url_sql, urls
from relaion_pipeline.core import schemas
from relaion_pipeline.match import index, matching

# --------------------------------------------------------------------------------------------------------------
# 1. Canonicalization vectors from Google's Safe Browsing "URLs and Hashing" document.
# --------------------------------------------------------------------------------------------------------------

SPEC_VECTORS = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    # The spec writes this one with raw bytes and expects "http://%01%80.com/". A Python str is a sequence of code
    # points and the reference encodes it as UTF-8, so U+0080 is the two bytes C2 80.
    ("http://\x01\x80.com/", "http://%01%C2%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]


@pytest.mark.parametrize(("url", "expected"), SPEC_VECTORS, ids=[repr(u)[1:40] for u, _ in SPEC_VECTORS])
def test_spec_canonicalization_vectors(url, expected):
    assert urls.canonicalize(url) == expected


# --------------------------------------------------------------------------------------------------------------
# 2. Lookup expressions and their scopes.
# --------------------------------------------------------------------------------------------------------------


def test_spec_expressions_host_and_path_combinations():
    assert dict(urls.scoped_expressions("http://a.b.c/1/2.html?param=1")) == {
        "a.b.c/1/2.html?param=1": "url",
        "a.b.c/1/2.html": "url",
        "a.b.c/": "host",
        "a.b.c/1/": "path",
        "b.c/1/2.html?param=1": "path",
        "b.c/1/2.html": "path",
        "b.c/": "host",
        "b.c/1/": "path",
    }


def test_spec_expressions_take_only_the_last_five_host_components():
    assert sorted(urls.lookup_expressions("http://a.b.c.d.e.f.g/1.html")) == sorted(
        [
            "a.b.c.d.e.f.g/1.html",
            "a.b.c.d.e.f.g/",
            "c.d.e.f.g/1.html",
            "c.d.e.f.g/",
            "d.e.f.g/1.html",
            "d.e.f.g/",
            "e.f.g/1.html",
            "e.f.g/",
            "f.g/1.html",
            "f.g/",
        ]
    )
    assert urls.host_suffixes("a.b.c.d.e.f.g") == ["a.b.c.d.e.f.g", "c.d.e.f.g", "d.e.f.g", "e.f.g", "f.g"]
    assert urls.host_suffixes("b.c") == ["b.c"]
    assert urls.host_suffixes("localhost") == ["localhost"]


def test_spec_expressions_ip_host_has_no_suffixes():
    assert dict(urls.scoped_expressions("http://1.2.3.4/1/")) == {"1.2.3.4/1/": "url", "1.2.3.4/": "host"}
    assert urls.host_suffixes("1.2.3.4") == ["1.2.3.4"]
    assert urls.host_suffixes("[2001:db8::1]") == ["[2001:db8::1]"]


def test_path_prefixes_are_at_most_four_including_root():
    assert urls.path_prefixes("/1/2/3/4/5/6.html", "q") == [
        "/1/2/3/4/5/6.html?q",
        "/1/2/3/4/5/6.html",
        "/",
        "/1/",
        "/1/2/",
        "/1/2/3/",
    ]
    # A directory path: the exact path is one expression, the prefixes stop at three components.
    assert urls.path_prefixes("/1/2/3/4/", None) == ["/1/2/3/4/", "/", "/1/", "/1/2/", "/1/2/3/"]
    # Duplicates collapse: `/1/` is both the exact path and a prefix.
    assert urls.path_prefixes("/1/", None) == ["/1/", "/"]
    assert urls.path_prefixes("/", None) == ["/"]
    assert urls.path_prefixes("/", "") == ["/?", "/"]


def test_at_most_thirty_expressions():
    expressions = urls.lookup_expressions("http://a.b.c.d.e.f.g.h/1/2/3/4/5/6/7.html?x=1&y=2")
    assert len(expressions) == 30 == len(set(expressions))
    assert {e.split("/", 1)[0] for e in expressions} == {"a.b.c.d.e.f.g.h", "d.e.f.g.h", "e.f.g.h", "f.g.h", "g.h"}
    assert {"/" + e.split("/", 1)[1] for e in expressions} == {
        "/1/2/3/4/5/6/7.html?x=1&y=2",
        "/1/2/3/4/5/6/7.html",
        "/",
        "/1/",
        "/1/2/",
        "/1/2/3/",
    }


def test_scope_labels():
    scoped = dict(urls.scoped_expressions("http://x.a.b/d/p.jpg?k=v"))
    assert scoped["x.a.b/d/p.jpg?k=v"] == "url"
    assert scoped["x.a.b/d/p.jpg"] == "url"
    assert scoped["x.a.b/"] == "host"
    assert scoped["x.a.b/d/"] == "path"
    assert scoped["a.b/d/p.jpg?k=v"] == "path"  # exact path, but on a parent domain
    assert scoped["a.b/d/p.jpg"] == "path"
    assert scoped["a.b/"] == "host"
    assert scoped["a.b/d/"] == "path"
    # The root page of a host is the URL itself.
    assert dict(urls.scoped_expressions("http://x.a.b/")) == {"x.a.b/": "url", "a.b/": "host"}
    assert dict(urls.scoped_expressions("http://x.a.b/?q")) == {
        "x.a.b/?q": "url",
        "x.a.b/": "url",
        "a.b/?q": "path",
        "a.b/": "host",
    }
    assert {scope for _, scope in urls.scoped_expressions("http://a.b.c/1/2/3.html")} == {"url", "path", "host"}


def test_scheme_and_port_are_left_out_of_expressions():
    assert urls.lookup_expressions("https://a.b:8443/x") == urls.lookup_expressions("http://a.b/x") == ["a.b/x", "a.b/"]


# --------------------------------------------------------------------------------------------------------------
# 3. IPv4 encodings.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0X1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0300.0250.0.1", "192.168.0.1"),
        ("017700000001", "127.0.0.1"),
        ("3279880203", "195.127.0.11"),
        ("0", "0.0.0.0"),
        ("10.1", "10.0.0.1"),
        ("192.168.1", "192.168.0.1"),
        ("192.168.0x101", "192.168.1.1"),
        ("1.2.3.4", "1.2.3.4"),
        ("001.002.003.004", "1.2.3.4"),
        ("1.2.3.4.", "1.2.3.4"),  # trailing dot
        ("1..2.3.4", "1.2.3.4"),  # repeated dots collapse first
        ("0xc0.0250.1.0x1", "192.168.1.1"),
        ("255.255.255.255", "255.255.255.255"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_ip_encodings_normalize_to_dotted_quad(host, expected):
    assert urls.canonicalize(f"http://{host}/x") == f"http://{expected}/x"
    assert urls.lookup_expressions(f"http://{host}/x") == [f"{expected}/x", f"{expected}/"]


@pytest.mark.parametrize(
    "host",
    [
        "256.1.1.1",
        "1.2.3.256",
        "1.2.3.4.5",
        "0x1g.1.1.1",
        "0X1G.1.1.1",
        "08.1.1.1",  # 8 is not an octal digit
        "4294967296",  # 2**32
        "1.2.65536",  # last part too big for two bytes
        "1.2.3.4a",
        "1e3.2.3.4",
    ],
)
def test_invalid_ip_hosts_stay_hosts(host):
    canonical = urls.parse(f"http://{host}/")
    assert canonical.host == host.lower()
    assert not urls.is_ip_host(canonical.host)
    # Not an IP, so it gets host suffixes like any other host.
    parts = canonical.host.split(".")
    assert urls.host_suffixes(canonical.host) == [canonical.host] + [
        ".".join(parts[i:]) for i in range(max(len(parts) - 5, 1), len(parts) - 1)
    ]


def test_escaped_newline_does_not_make_an_ip_or_a_port():
    # Regression: Python's `$` also matches before a final newline, so an unescaped %0A let the host pass as an IP
    # (and int() ignored the newline) and let a port be stripped from the middle of the host.
    assert urls.canonicalize("http://1.2.3.4%0A/") == "http://1.2.3.4%0A/"
    assert urls.canonicalize("http://h:80%0A/") == "http://h:80%0A/"


def test_ipv6_literal_drops_port_and_gets_no_suffixes():
    # Regression: a port after a bracketed IPv6 literal used to stay in the host.
    assert urls.canonicalize("http://[2001:DB8::1]:8080/x") == "http://[2001:db8::1]/x"
    assert urls.lookup_expressions("http://user@[::1]:80/x") == ["[::1]/x", "[::1]/"]


# --------------------------------------------------------------------------------------------------------------
# 4. Edge cases.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", " ", "  \t\r\n ", "\t", "#only", "#", "  #frag"])
def test_unusable_urls_have_no_expressions(url):
    assert urls.lookup_expressions(url) == []
    with pytest.raises(ValueError):
        urls.canonicalize(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Www.Example.COM", "http://www.example.com/"),
        ("HtTpS://A.B/Path?Q=V", "https://a.b/Path?Q=V"),  # only scheme and host are lower-cased
        ("http://user:pw@Host.Example/x", "http://host.example/x"),
        ("http://user:pw@Host.Example:8080/x", "http://host.example/x"),
        ("http://a@b@c.d/", "http://c.d/"),
        ("http://a.b:/x", "http://a.b/x"),
        ("http://bücher.example/straße", "http://b%C3%BCcher.example/stra%C3%9Fe"),
        ("http://例え.jp/パス?q=値", "http://%E4%BE%8B%E3%81%88.jp/%E3%83%91%E3%82%B9?q=%E5%80%A4"),
        ("http://a.b/%c3%bc", "http://a.b/%C3%BC"),  # lower-case escapes come back upper-case
        ("http://a.b/\U0001f600", "http://a.b/%F0%9F%98%80"),
        ("http://a.b/100%", "http://a.b/100%25"),
        ("http://a.b/%zz/%4", "http://a.b/%25zz/%254"),
        ("http://a.b/%%41", "http://a.b/%25A"),
        ("http://a.b/%2541", "http://a.b/A"),  # repeated unescaping
        ("http://a.b/x%00y", "http://a.b/x%00y"),
        ("http://a.b/x%7Fy%20z", "http://a.b/x%7Fy%20z"),
        ("http://a.b/p%2Fq", "http://a.b/p/q"),  # %2F unescapes to a real slash
        ("http://a.b/p%3Fq", "http://a.b/p?q"),  # %3F unescapes to a real query separator
        ("http://a.b/a\tb\rc\nd", "http://a.b/abcd"),
        ("ht\ttp://a\n.b/x\r", "http://a.b/x"),
        ("http://a.b/%09x", "http://a.b/%09x"),  # an escaped tab is not removed
        ("http://a.b/../../x", "http://a.b/x"),  # `..` above the root stays at the root
        ("http://a.b/..", "http://a.b/"),
        ("http://a.b/x/./y/../z", "http://a.b/x/z"),
        ("http://a.b/x/.", "http://a.b/x"),
        ("http://a.b/x/./", "http://a.b/x/"),
        ("http://a.b/x/.y/..y/...", "http://a.b/x/.y/..y/..."),  # not dot segments
        ("http://a.b.././x", "http://a.b/x"),
        ("http://.a..b./", "http://a.b/"),
        ("http://a.b//x///y//", "http://a.b/x/y/"),
        ("http://a.b/x?y//z?w=/../", "http://a.b/x?y//z?w=/../"),  # the query is kept as is
        ("http://a.b?x=1", "http://a.b/?x=1"),
        ("http://a.b?", "http://a.b/?"),
        ("http://a.b/x?#frag", "http://a.b/x?"),
        ("http://a.b/x?a b", "http://a.b/x?a%20b"),
        ("http://a.b/x?%23", "http://a.b/x?%23"),
        ("https://a.b", "https://a.b/"),
        ("ftp://a.b/x", "ftp://a.b/x"),
        ("a.b/x?y", "http://a.b/x?y"),
    ],
)
def test_edge_case_canonicalization(url, expected):
    assert urls.canonicalize(url) == expected


def test_unicode_escapes_use_upper_case_hex():
    canonical = urls.canonicalize("http://ÄÖ.example/ü?é%c3%a9")
    assert canonical == "http://%C3%84%C3%96.example/%C3%BC?%C3%A9%C3%A9"  # non-ASCII is not lower-cased
    assert canonical.isascii()
    assert all(re.fullmatch("[0-9A-F]{2}", chunk[:2]) for chunk in canonical.split("%")[1:])


# --------------------------------------------------------------------------------------------------------------
# 5. Agreement of the DuckDB path with the reference on generated URLs.
# --------------------------------------------------------------------------------------------------------------

N_REGULAR = 4000
N_IRREGULAR = 3000

ALMOST_FAST = [
    "http://a.b/x/./y",
    "http://a.b/x/../y",
    "http://a.b/x/.",
    "http://a.b/x/..",
    "http://a.b/.",
    "http://a.b/..",
    "http://a.b/x//y",
    "http://a.b//",
    "http://a.b/x//",
    "http://1.2.3.4/",
    "http://1.2.3.4",
    "http://0x7f.1/",
    "http://0X7F.1/x",
    "http://3279880203/blah",
    "http://256.1.1.1/",
    "http://1.2.3/",
    "http://12/",
    "http://1a.2.3.4/",
    "http://0x1g.1.1.1/",
    "http://a.b/%41",
    "http://a.b/x?%41",
    "http://a.b/x?y#z",
    "http://a.b/x#y%zz",
    "http://a.b/x#",
    "http://a.b#x",
    "http://a.b?x",
    "http://a.b?",
    "HTTP://a.b/",
    "Http://a.b/",
    "HTTPS://A.B/",
    "ftp://a.b/",
    "http:/a.b/",
    "http:a.b/",
    "//a.b/x",
    "a.b/x",
    "http://a.b./",
    "http://.a.b/",
    "http://a..b/",
    "http://a.b:80/",
    "http://u@a.b/",
    "http://a_b.c/",
    "http://a.b/x y",
    "http://a.b/x\ty",
    "http://a.b/x\n",
    "http://a.b/x ",
    " http://a.b/x",
    "http://a.b/ü",
    "http://a.b/x?ü",
    "http://a.b/x#ü",
    "http://a.b/x\x7f",
    "http://a.b/x?y//z",
    "http://a.b/x?y/./z/../",
    "http://a.b/x/.y/..z/...",
    "http://a.b/x?",
    "http://a.b/x??",
    "http://a.b/?",
    "http://a.b",
    "http://a",
    "http://A",
    "http://-/",
    "http://",
    "http:///x",
    "http://.../x",
    "http://[::1]/",
    "http://[::1]:80/x",
    "http://a.b/\x00",
    "http://a.b/%00",
    "",
    " ",
    "#",
    "#x",
    None,
]

LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:@"
QUERY_CHARS = PATH_CHARS + "/?"
UNICODE = ["ü", "é", "ß", "日本", "пример", "😀", "\u00a0", "\u2028", "ａ", "İ"]
SPACES = [" ", "\t", "\r", "\n", "\r\n", "\x0b", "\x0c"]


def _label(rng: random.Random) -> str:
    return "".join(rng.choice(LABEL_CHARS) for _ in range(rng.randint(1, 10)))


def _host(rng: random.Random) -> str:
    labels = [_label(rng) for _ in range(rng.randint(1, 7))]
    if rng.random() < 0.5:
        labels = [label.lower() for label in labels]
    return ".".join(labels)


def _segment(rng: random.Random) -> str:
    segment = "".join(rng.choice(PATH_CHARS) for _ in range(rng.randint(1, 12)))
    return segment if segment not in (".", "..") else segment + "x"


def _query(rng: random.Random) -> str:
    pairs = []
    for _ in range(rng.randint(0, 4)):
        key = "".join(rng.choice(PATH_CHARS) for _ in range(rng.randint(0, 5)))
        value = "".join(rng.choice(QUERY_CHARS) for _ in range(rng.randint(0, 12)))
        pairs.append(f"{key}={value}" if rng.random() < 0.8 else key)
    query = "&".join(pairs)
    if rng.random() < 0.2:
        query += rng.choice(["//", "?", "/./", "/../", "?a//b", "=", "&&"])
    return query


def regular_url(rng: random.Random) -> str:
    """`http(s)://host/path?query#fragment` with nothing to unescape or resolve."""
    url = f"{rng.choice(['http', 'https'])}://{_host(rng)}"
    segments = [_segment(rng) for _ in range(rng.randint(0, 6))]
    if segments or rng.random() < 0.5:
        url += "/" + "/".join(segments)
        if segments and rng.random() < 0.3:
            url += "/"
    if rng.random() < 0.4:
        url += "?" + _query(rng)
    if rng.random() < 0.15:
        url += "#" + rng.choice(["", "frag", "a#b", "x y", "ü", "%zz", "/../", "?q"])
    return url


def _escape_char(rng: random.Random, char: str) -> str:
    text = "".join(f"%{b:02X}" for b in char.encode())
    return text if rng.random() < 0.5 else text.lower()


def _ip_host(rng: random.Random) -> str:
    value = rng.getrandbits(32) if rng.random() < 0.8 else rng.choice([0, 2**32 - 1, 0x7F000001])
    octets = [(value >> s) & 0xFF for s in (24, 16, 8, 0)]
    style = rng.randrange(8)
    if style == 0:
        return ".".join(map(str, octets))
    if style == 1:
        return str(value)
    if style == 2:
        return ".".join(rng.choice([hex(o), f"0X{o:X}", f"0x{o:02x}"]) for o in octets)
    if style == 3:
        return ".".join("0" + oct(o)[2:] for o in octets)
    if style == 4:  # fewer than four parts
        return f"{octets[0]}.{octets[1]}.{(octets[2] << 8) | octets[3]}"
    if style == 5:
        return f"{octets[0]}.{value & 0xFFFFFF}"
    if style == 6:  # mixed encodings
        return ".".join(rng.choice([str(o), hex(o), "0" + oct(o)[2:], f"{o:03d}"]) for o in octets)
    return hex(value)


FAKE_IPS = [
    "256.1.1.1",
    "1.2.3.4.5",
    "0x1g.1.1.1",
    "1.2.3.256",
    "08.1.2.3",
    "4294967296",
    "99999999999999999999",
    "1.2.3.4a",
    "a1.2.3.4",
    "1-2.3.4",
    "0x",
    "0x.0x.0x.0x",
    "00.00",
    "1e3.com",
    "12345678901",
    "1.2.3",
    "1.2",
    "7",
    "1..2",
    "0xffffffffff",
    "1.2.3.04",
    "0.0.0.0",
]


def _mutate(rng: random.Random, url: str) -> str:
    """Apply one irregular feature to a URL."""
    kind = rng.randrange(24)
    scheme, _, rest = url.partition("://")
    host, slash, tail = rest.partition("/")
    if kind == 0:  # percent-escape some characters
        chars = list(url)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            chars[i] = _escape_char(rng, chars[i])
        return "".join(chars)
    if kind == 1:  # double escapes
        return url + "/" + rng.choice(["%2541", "%252F", "%25%32%35", "%2525252541", "%%32%35", "%25"])
    if kind == 2:
        return url + rng.choice(["/a%2Fb", "/%2F%2F", "/%2e%2e/x", "/%2E/y", "/%3Fq", "/%23x", "/x%3F%23"])
    if kind == 3:
        return url + rng.choice(["/%00", "/a%00b", "?%00", "/%zz", "/%4", "/%", "/%%", "/%g1", "/%7f", "/%Ff"])
    if kind == 4:  # spaces and control characters
        i = rng.randrange(len(url) + 1)
        return url[:i] + rng.choice(SPACES) + url[i:]
    if kind == 5:
        return rng.choice(SPACES) + url + rng.choice(SPACES)
    if kind == 6:  # unicode anywhere
        i = rng.randrange(len(url) + 1)
        return url[:i] + rng.choice(UNICODE) + url[i:]
    if kind == 7:
        return f"{scheme}://{rng.choice(UNICODE)}.{host}{slash}{tail}"
    if kind == 8:  # IP hosts in all encodings
        return f"{scheme}://{_ip_host(rng)}{slash}{tail}"
    if kind == 9:  # hosts that look like IPs but are not
        return f"{scheme}://{rng.choice(FAKE_IPS)}{slash}{tail}"
    if kind == 10:  # ports
        return f"{scheme}://{host}:{rng.choice(['80', '8080', '', '0', '65535', 'x'])}{slash}{tail}"
    if kind == 11:  # user info
        return f"{scheme}://{rng.choice(['u', 'u:p', 'a@b', 'u:p%40q', ''])}@{host}{slash}{tail}"
    if kind == 12:  # dot segments
        dots = rng.choice(["/.", "/..", "/./", "/../", "/../../../..", "/./.", "/x/..", "/x/../"])
        return f"{scheme}://{host}/{tail.split('?')[0]}{dots}" + ("?" + tail.split("?", 1)[1] if "?" in tail else "")
    if kind == 13:  # repeated slashes
        return f"{scheme}://{host}{rng.choice(['//', '///', '/x//', '//x//'])}{tail}"
    if kind == 14:  # dots around the host
        return f"{scheme}://{rng.choice(['', '.', '..'])}{host.replace('.', rng.choice(['.', '..']))}{rng.choice(['.', '...', ''])}{slash}{tail}"
    if kind == 15:  # missing scheme
        return rest
    if kind == 16:  # missing path, query right after the host
        return f"{scheme}://{host}" + rng.choice(["", "?", "?q", "?a//b", "#f", "?#"])
    if kind == 17:  # empty query
        return url.split("#")[0].split("?")[0] + "?"
    if kind == 18:  # very long
        url = f"{scheme}://{host}/"
        while len(url) < rng.randint(1800, 2200):
            url += _segment(rng) + rng.choice(["/", "/", "//", "/./", "?", "&", "%20"])
        return url
    if kind == 19:  # upper-case or other schemes
        return rng.choice(["HTTP", "Http", "HTTPS", "ftp", "file", "svn+ssh"]) + "://" + rest
    if kind == 20:  # fragments with special characters
        return url + rng.choice(["#", "#a#b", "#%zz", "# x", "#\t", "#ü"])
    if kind == 21:  # backslashes and odd characters
        return url + rng.choice(["/a\\b", "\\", "/x`y", '/"q"', "/<>", "/{}|^"])
    if kind == 22:  # IPv6 literals
        return f"{scheme}://{rng.choice(['[::1]', '[2001:DB8::1]', '[::ffff:1.2.3.4]'])}{rng.choice(['', ':80'])}{slash}{tail}"
    return f"{scheme}://{rng.choice(['%31%32%37%2e%30%2e%30%2e%31', 'www%2Eexample%2Ecom', 'a%2Fb.c', '%41.b', 'h%23.c'])}{slash}{tail}"


def generate_urls(seed: int = 20240601) -> list[str | None]:
    rng = random.Random(seed)
    generated: list[str | None] = [regular_url(rng) for _ in range(N_REGULAR)]
    for _ in range(N_IRREGULAR):
        url = regular_url(rng)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            url = _mutate(rng, url)
        generated.append(url)
    generated.extend(ALMOST_FAST)
    rng.shuffle(generated)
    return generated


def reference_scoped(url: str | None) -> set[tuple[str, str]]:
    if urls.lookup_expressions(url) == []:
        return set()
    return set(urls.scoped_expressions(url))


@pytest.fixture(scope="module")
def con():
    connection = matching.connect()
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def generated():
    return generate_urls()


def fast_flags(con, url_values: list[str | None]) -> list[bool]:
    """Which URLs the SQL path canonicalizes itself (True) rather than through the reference UDF."""
    table = pa.table(
        {"row_number": pa.array(range(len(url_values)), pa.int64()), "url": pa.array(url_values, pa.string())}
    )
    con.register("test_urls_fast", table)
    try:
        rows = con.sql(
            "WITH src AS (SELECT row_number, CAST(row_number AS VARCHAR) AS row_key, url FROM test_urls_fast),"
            f"{url_sql.canonical_parts_sql('src')} SELECT row_number, fast FROM classified"
        ).fetchall()
    finally:
        con.unregister("test_urls_fast")
    flags = [False] * len(url_values)
    for row_number, fast in rows:
        flags[row_number] = bool(fast)
    return flags


def test_generated_urls_cover_both_paths(con, generated):
    assert len(generated) >= 5000
    flags = fast_flags(con, generated)
    share = sum(flags) / len(flags)
    print(f"\n{len(generated)} URLs, fast path {sum(flags)} ({share:.1%}), UDF fallback {len(flags) - sum(flags)}")
    assert share > 0.5
    assert len(flags) - sum(flags) >= 2000
    almost = dict(zip(ALMOST_FAST, fast_flags(con, ALMOST_FAST), strict=True))
    for url in [
        "http://a.b/x/./y",
        "http://a.b/x//y",
        "http://1.2.3.4/",
        "http://0x7f.1/",
        "http://a.b/%41",
        "HTTP://a.b/",
    ]:
        assert not almost[url], url
    for url in ["http://a.b/x?y#z", "http://a.b/x?y//z", "http://a.b/x/.y/..z/...", "http://1a.2.3.4/", "http://a.b#x"]:
        assert almost[url], url


def test_sql_expressions_agree_with_reference(con, generated):
    sql = url_sql.lookup_expressions_sql(con, generated)
    flags = fast_flags(con, generated)
    mismatches = []
    for i, url in enumerate(generated):
        expected = reference_scoped(url)
        assert len(expected) <= 30 * len(urls.host_forms(urls.parse(url).host) if expected else [])
        if sql[i] != expected:
            mismatches.append((url, flags[i], sorted(expected), sorted(sql[i])))
    detail = "\n".join(
        f"  {url!r} (fast path: {fast})\n    reference: {ref}\n    sql:       {got}"
        for url, fast, ref, got in mismatches[:5]
    )
    assert not mismatches, f"{len(mismatches)} of {len(generated)} URLs disagree:\n{detail}"


def test_sql_expressions_agree_on_almost_fast_urls(con):
    sql = url_sql.lookup_expressions_sql(con, ALMOST_FAST)
    mismatches = [
        (u, sorted(reference_scoped(u)), sorted(sql[i]))
        for i, u in enumerate(ALMOST_FAST)
        if sql[i] != reference_scoped(u)
    ]
    assert not mismatches, "\n".join(f"{u!r}\n  reference: {r}\n  sql:       {s}" for u, r, s in mismatches[:8])


def test_sql_expressions_agree_on_spec_and_edge_vectors(con):
    values = [u for u, _ in SPEC_VECTORS] + [
        "http://a.b.c/1/2.html?param=1",
        "http://a.b.c.d.e.f.g/1.html",
        "http://1.2.3.4/1/",
    ]
    values += ["http://a.b.c.d.e.f.g.h/1/2/3/4/5/6/7.html?x=1&y=2", "http://x.a.b/d/p.jpg?k=v", "http://x.a.b/?q"]
    sql = url_sql.lookup_expressions_sql(con, values)
    for i, url in enumerate(values):
        assert sql[i] == reference_scoped(url), url


# --------------------------------------------------------------------------------------------------------------
# 6. Hashes of the expressions: Python's hashlib against DuckDB's sha256/md5.
# --------------------------------------------------------------------------------------------------------------


def test_expression_hashes_agree(con, generated):
    sample = generated[:400]
    table = pa.table({"row_number": pa.array(range(len(sample)), pa.int64()), "url": pa.array(sample, pa.string())})
    con.register("test_urls_hash", table)
    try:
        rows = con.sql(
            "WITH src AS (SELECT row_number, CAST(row_number AS VARCHAR) AS row_key, url FROM test_urls_hash),"
            f"{url_sql.canonical_parts_sql('src')}, {url_sql.EXPRESSIONS_SQL} "
            "SELECT row_number, expression, sha256(expression), md5(expression) FROM expressions"
        ).fetchall()
    finally:
        con.unregister("test_urls_hash")
    sql_hashes: dict[int, set[tuple[str, str]]] = {i: set() for i in range(len(sample))}
    for row_number, _, sha, md5 in rows:
        sql_hashes[row_number].add((sha, md5))
    checked = 0
    for i, url in enumerate(sample):
        expected = {
            (hashlib.sha256(e.encode()).hexdigest(), hashlib.md5(e.encode()).hexdigest())
            for e in urls.lookup_expressions(url)
        }
        assert sql_hashes[i] == expected, url
        checked += len(expected)
    assert checked > 1000
    # A parameterized query on an escape-heavy expression too.
    expression = urls.lookup_expressions("http://Ü.example/%zz?q=1 2")[0]
    assert con.sql("SELECT sha256(?)", params=[expression]).fetchall() == [
        (hashlib.sha256(expression.encode()).hexdigest(),)
    ]


@pytest.mark.parametrize("domains", [True, False], ids=["domains", "no-domains"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "sql"])
def test_index_entries_agree_with_reference(con, generated, tmp_path, compiled, domains, monkeypatch):
    """The lookup-hash index, built by the compiled kernel (OpenSSL) or by SQL, holds for every row exactly the
    entries the reference derives in Python (without its domain entries for lists that have none); the
    compiled build streams batches (here of 1,000 URLs)."""
    monkeypatch.setattr(index, "BATCH_ROWS", 1000)
    values = [*generated, None, "", "   ", "http://", "/only/a/path", "http://[::1]:8080/x", "http://a.b.c.d.e.f.g/h"]
    values += [
        "http://localhost",
        "http://q.example?x",
        "http://q.example/p?",
        "http://face.cafe/",
        "http://a.example#f",
        "http://" + "a." * 2000 + "example/x",  # 2,000 dots
        "http://a.example/" + "x" * 20_000,  # longer than the compiled canonicalization takes
    ]
    values += [f"http://b{n % 3}.example/d/" + "y" * n + "?q" for n in range(300)]  # MD5 of 1 to 5 blocks
    shard = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": pa.array(values, pa.string()), "caption": [""] * len(values)}), shard)
    inputs = matching.MatchInputs("urls", str(shard), schemas.detect(pq.read_schema(shard), str(shard)), "", None)
    meta = index.build(con, inputs, str(tmp_path / "work"), {"bytes": 0}, counts={}, compiled=compiled, domains=domains)
    assert meta["built_by"] == ("compiled" if compiled else "sql"), "OpenSSL's libcrypto was not found"
    path, _ = index.paths(str(tmp_path / "work"), "urls")
    entries = index.entries_of(con, path, np.arange(len(values), dtype=np.int64))

    def expected(url):
        return {e for e in index.reference_entries(url) if domains or e[0] != index.DOMAIN}

    differ = [values[row] for row in range(len(values)) if entries[row] != expected(values[row])]
    assert differ == []
    assert meta["entries"] == pq.ParquetFile(path).metadata.num_rows > 10 * len(generated)
    assert entries[len(generated) + 3] == {(index.NONE, None, None)}, "a URL without a host is marked, not dropped"
    assert entries[len(generated)] == set() and entries[len(generated) + 2] == set(), "no URL, no entries"


def _fuzzed_urls(rng: random.Random, n: int) -> list[str]:
    """URLs assembled from the pieces canonicalization has rules for, in random combinations."""
    schemes = [
        "http://",
        "https://",
        "HTTPS://",
        "hTtP://",
        "ftp://",
        "",
        "a+b.c-d://",
        "1http://",
        "http:/",
        " http://",
    ]
    users = ["", "", "user@", "u:p@", "a@b@", "%40@"]
    labels = ["www", "Example", "a-b", "x", "CAFE", "face", "0x1f", "0XaB", "0x", "x0", "12", "012", "%41bc", "%2E"]
    labels += ["ü", "%C3%BC", "xn--9a", ""]
    ports = ["", "", ":80", ":", ":8x", "::1"]
    segments = ["a", "B", ".", "..", "", "%2e", "%2E%2e", "%252F", "c d", "\t", "é", "%", "%zz", "%25", ";x=1", "~"]
    queries = ["", "?", "?a=1", "?a=%20b&c", "?q=a/../b", "??x", "?%23"]
    tails = ["", "", "#frag", "#", "#%41", " ", "\t", "\n"]
    out = []
    for _ in range(n):
        host = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 7)))
        if rng.random() < 0.2:
            host = rng.choice([".", ".."]) + host + rng.choice(["", ".", ".."])
        path = "".join("/" + rng.choice(segments) for _ in range(rng.randint(0, 6))) + rng.choice(["", "/"])
        url = rng.choice(schemes) + rng.choice(users) + host + rng.choice(ports) + path + rng.choice(queries)
        out.append(url + rng.choice(tails))
    return out


def test_compiled_canonicalization_is_the_reference(generated):
    """Every URL the compiled canonicalizer decides gets exactly the reference's host, path and query; it leaves
    to DuckDB only what may be an IP address in another form than a dotted quad, IPv6 literals, non-ASCII hosts
    (which have an IDNA form too) and URLs without a canonical form."""
    fuzzed = _fuzzed_urls(random.Random(5), 20_000)
    values = [*generated, *fuzzed, None, "", "   ", "\t", "http://", "http://a.b/%2525252541"]
    decided = 0
    for url, got in zip(values, canonical_kernel.parts_of(values), strict=True):
        if got is None:
            continue
        decided += 1
        canonical = urls.parse(url)
        assert got == (canonical.host, canonical.path, canonical.query), url
        assert urls.host_forms(canonical.host) == [canonical.host], url
    ascii_hosts = [u for u in values if _ascii_host(u)]
    left = [u for u, got in zip(generated, canonical_kernel.parts_of(generated), strict=True) if got is None]
    assert decided > 0.8 * len(ascii_hosts), decided
    assert [u for u in left if _never_an_ip(u) and _ascii_host(u)] == [], (
        "left to DuckDB though its host cannot be an IP address"
    )


def _ascii_host(url: str | None) -> bool:
    """Whether a URL has a canonical host without non-ASCII bytes."""
    try:
        return urls._NON_ASCII_ESCAPE.search(urls.parse(url).host) is None
    except ValueError:
        return False


IPV4_HOSTS = [
    "0306.063.0144.0303",  # octal
    "0xC0.0XA8.0x1.0x1",  # hex, either case
    "0xc0a80101",  # one number
    "3232235777",
    "192.168.257",  # the last number fills two bytes
    "10.0x10000",
    "255.255.65535",
    "00000000000000000000001.2.3.4",  # leading zeros: octal, however many
    "0x" + "0" * 40 + "1.2.3.4",  # more digits than any integer holds, still 1
    "4294967295",
    "1.2.3.4.",  # a trailing dot
]
NAMES_LIKE_IPV4 = [
    "255.255.65536",  # the last number too large
    "4294967296",
    "1.2.3.4.5",  # five numbers
    "0x100.1.1.1",  # a byte too large
    "08.1.1.1",  # 8 is no octal digit
    "0x1f0x2",  # an x inside a hex number
    "0x00x1",
    "cafe.de",  # hex letters without 0x
    "0x1f.face",
    "12345678901234567890",
]


def test_compiled_canonicalization_normalizes_ipv4_encodings():
    """IPv4 addresses in any encoding (hex, octal, fewer numbers) become the reference's dotted quad in the
    compiled canonicalizer itself, and hosts that only look like one stay names; only hosts of under 5 bytes
    (whose quad may be longer than the room the kernel gives a row) are left to DuckDB."""
    values = [f"http://{host}/a/b?q" for host in IPV4_HOSTS + NAMES_LIKE_IPV4]
    values += [f"{host}:8080/x" for host in IPV4_HOSTS]  # no scheme, a port
    for url, got in zip(values, canonical_kernel.parts_of(values), strict=True):
        canonical = urls.parse(url)
        assert got == (canonical.host, canonical.path, canonical.query), url
    hosts = [urls.parse(v).host for v in values[: len(IPV4_HOSTS)]]
    assert hosts[:3] == ["198.51.100.195", "192.168.1.1", "192.168.1.1"]
    assert all(urls.is_ip_host(host) for host in hosts)
    assert not any(urls.is_ip_host(urls.parse(f"http://{h}/").host) for h in NAMES_LIKE_IPV4)
    short = ["http://1/", "http://0x1/x", "http://1.2/", "http://01.2/"]
    assert canonical_kernel.parts_of(short) == [None] * len(short), "short encodings are DuckDB's to decide"
    assert [urls.parse(u).host for u in short] == ["0.0.0.1", "0.0.0.1", "1.0.0.2", "1.0.0.2"]


def _never_an_ip(url: str | None) -> bool:
    """Whether a URL's canonical host cannot be an IPv4 address in any encoding: it has a character other than
    digits and dots outside a `0x` hex number (`cafe.de`, `0x1f.face`)."""
    try:
        host = urls.parse(url).host
    except ValueError:
        return False
    return not host.startswith("[") and urls._POSSIBLE_IP.fullmatch(host) is None
