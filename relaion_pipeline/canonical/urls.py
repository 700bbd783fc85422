"""URL canonicalization and lookup expressions, following the Safe Browsing v4 "URLs and hashing" rules.

This is the reference implementation. Partner lists hash the lookup expressions produced here; the DuckDB
matching path (`relaion_pipeline.match.matching`) must agree with it on every URL, which a test checks on thousands
of generated URLs.

Canonical form: strip surrounding whitespace, remove tab/CR/LF, drop the fragment, repeatedly percent-unescape,
default to `http://`, normalize the host (dots, IP encodings, lower case, no user info, no port), resolve the path
(`.`/`..` segments, repeated slashes, empty path becomes `/`), keep the query, then percent-escape bytes
<= 0x20, >= 0x7f, `#` and `%` with upper-case hex.

Non-ASCII hosts have a second form: browsers and Safe Browsing clients hash the IDNA form of a host (UTS #46:
mapped, case-folded, NFC, each label punycoded), while a canonicalizer that knows no IDNA (this one, above)
hashes its percent-encoded UTF-8. A partner may have used either, so such a host is matched in both
(`host_forms`): every lookup expression and host suffix exists for each form. ASCII hosts have one form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import idna

_HEX_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# \Z, not $: Python's $ also matches before a final newline, and an unescaped %0A can end the host.
_PORT = re.compile(r":[0-9]*\Z")
_BRACKETED_HOST = re.compile(rb"(\[[^\]]*\])(?::[0-9]*)?\Z")
_DOTS = re.compile(rb"\.{2,}")
_POSSIBLE_IP = re.compile(r"(?:0[xX][0-9A-Fa-f]+|[0-9.])+")  # used with fullmatch
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")  # used with fullmatch

_NON_ASCII_ESCAPE = re.compile(r"%[89A-F][0-9A-F]")  # an escaped byte >= 0x80 in a canonical host
# What decides the host forms: the UTS #46 mapping table is the idna package's (its Unicode version).
HOST_FORMS = f"percent-encoded+uts46-idna-{idna.__version__}"

MAX_HOST_SUFFIX_COMPONENTS = 5
MAX_PATH_PREFIXES = 4


@dataclass(frozen=True)
class CanonicalURL:
    """A canonical URL split into the parts lookup expressions are built from (all already escaped)."""

    scheme: str
    host: str
    path: str
    query: str | None  # None when the URL has no '?'

    def __str__(self) -> str:
        query = "" if self.query is None else "?" + self.query
        return f"{self.scheme}://{self.host}{self.path}{query}"


_TO_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff#%]")


def _unhex(match: re.Match) -> bytes:
    return bytes((int(match.group(1), 16),))


def _unescape_fully(data: bytes) -> bytes:
    """Percent-unescape until nothing changes (`%2525` becomes `%`)."""
    while b"%" in data:
        decoded = _HEX_ESCAPE.sub(_unhex, data)
        if decoded == data:
            break
        data = decoded
    return data


def _escape(data: bytes) -> str:
    """Escape bytes <= 0x20, >= 0x7f, '#' and '%' as %XX (upper-case hex); everything else stays."""
    return _TO_ESCAPE.sub(lambda m: b"%%%02X" % m.group(0)[0], data).decode("ascii")


def _ascii_lower(data: bytes) -> bytes:
    return data.lower()  # bytes.lower() changes ASCII letters only


def _parse_ip_number(part: str) -> int | None:
    """One component of an IPv4 address in any legal encoding: 0x hex, leading-zero octal or decimal."""
    try:
        if part[:2] in ("0x", "0X"):
            return int(part[2:], 16) if len(part) > 2 else 0
        if len(part) > 1 and part[0] == "0":
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError:
        return None


def _normalize_ip(host: str) -> str | None:
    """Return the dotted quad for a host that is an IPv4 address in any encoding, else None."""
    if not host or not _POSSIBLE_IP.fullmatch(host):
        return None
    parts = host.split(".")
    if len(parts) > 4 or any(p == "" for p in parts):
        return None
    numbers = [_parse_ip_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    head, last = numbers[:-1], numbers[-1]
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(parts)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(parts)) + last
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _canonical_host(raw: bytes) -> bytes:
    host = raw.rsplit(b"@", 1)[-1]  # drop user info
    if host.startswith(b"["):  # IPv6 literal: only a port after the closing bracket
        bracketed = _BRACKETED_HOST.match(host)
        if bracketed:
            host = bracketed.group(1)
    else:
        host = _PORT.sub("", host.decode("latin-1")).encode("latin-1")
    host = _DOTS.sub(b".", host).strip(b".")
    ip = _normalize_ip(host.decode("latin-1"))
    if ip is not None:
        return ip.encode("ascii")
    return _ascii_lower(host)


def _settled_host(host: bytes) -> bytes:
    """A host after IDNA mapping, settled as the canonical host is: no repeated or outer dots (a mapped
    full stop such as `\u3002` is a dot), an IPv4 address as its dotted quad (fullwidth digits map to digits)."""
    host = _DOTS.sub(b".", host).strip(b".")
    ip = _normalize_ip(host.decode("latin-1"))
    return ip.encode("ascii") if ip is not None else _ascii_lower(host)


def _idna_label(label: str) -> bytes:
    """One label (or several: a mapped full stop separates them) in IDNA form: UTS #46 mapping (case folding,
    width, NFC; the STD3 rules left to the caller, as browsers do), then `xn--` + punycode when it is not
    ASCII. Raises ValueError (idna.IDNAError) for a label with a code point UTS #46 disallows."""
    mapped = idna.uts46_remap(label, std3_rules=False)
    parts = [p if p.isascii() else "xn--" + p.encode("punycode").decode("ascii") for p in mapped.split(".")]
    return ".".join(parts).encode("ascii")


def idna_host(host: str) -> str | None:
    """The IDNA form of a canonical host with non-ASCII bytes (`b%C3%BCcher.example` -> `xn--bcher-kva.example`),
    escaped as canonical parts are; None for an ASCII host (its only form) or when no label converts.

    Label by label: a label that is not UTF-8 or that UTS #46 disallows stays as it is (percent-encoded), so
    the labels that do convert (and the suffixes made of them) still get their IDNA form. No validation
    beyond the mapping (hyphens, bidi, joiners): a form a browser would refuse is only a hash no entry has.
    """
    if "%" not in host or not _NON_ASCII_ESCAPE.search(host):
        return None
    labels = []
    for label in _HEX_ESCAPE.sub(_unhex, host.encode("ascii")).split(b"."):  # escaped once: one round undoes it
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(_idna_label(label.decode("utf-8")))
        except (UnicodeError, idna.IDNAError):
            labels.append(label)
    settled = _settled_host(b".".join(labels))
    form = _escape(settled)
    return form if settled and form != host else None


def idna_domain(value: str) -> str:
    """A `domain` list value written in Unicode in its IDNA form (`köln.example` -> `xn--kln-sna.example`), the
    form rows' hosts are matched in; ASCII values are returned as they are. Raises ValueError when a label has
    a code point UTS #46 disallows."""
    if value.isascii():
        return value
    try:
        return _settled_host(b".".join(_idna_label(label) for label in value.split("."))).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(str(error)) from None


def host_forms(host: str) -> list[str]:
    """The forms a canonical host is matched in: itself, then its IDNA form when it has non-ASCII bytes."""
    form = idna_host(host)
    return [host] if form is None else [host, form]


def _canonical_path(raw: bytes) -> bytes:
    segments: list[bytes] = []
    for segment in raw.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = b"/" + b"/".join(segments)
    if raw.endswith(b"/") and path != b"/":
        path += b"/"
    return path


def parse(url: str) -> CanonicalURL:
    """Canonicalize `url` and return its parts; raises ValueError for an empty URL."""
    if url is None:
        raise ValueError("URL is null")
    data = url.encode("utf-8", errors="surrogateescape")
    data = data.split(b"#", 1)[0].strip()
    data = data.replace(b"\t", b"").replace(b"\r", b"").replace(b"\n", b"")
    data = _unescape_fully(data)
    if not data:
        raise ValueError("URL is empty")

    text = data.decode("latin-1")  # bytes <-> code points 0..255, lossless
    match = _SCHEME.match(text)
    if match:
        scheme, rest = match.group(1).lower(), text[match.end() :]
    else:
        scheme, rest = "http", text
    rest, sep, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    host_bytes = _canonical_host(host.encode("latin-1"))
    if not host_bytes:
        raise ValueError("URL has no host")
    path_bytes = _canonical_path((slash + path).encode("latin-1"))
    return CanonicalURL(
        scheme=scheme,
        host=_escape(host_bytes),
        path=_escape(path_bytes),
        query=_escape(query.encode("latin-1")) if sep else None,
    )


def canonicalize(url: str) -> str:
    """The canonical form of `url`, e.g. `canonicalize("HTTP://Www.Example.COM") == "http://www.example.com/"`."""
    return str(parse(url))


def is_ip_host(host: str) -> bool:
    """True when a canonical host is an IP address, which gets no host-suffix expressions."""
    return host.startswith("[") or bool(_DOTTED_QUAD.fullmatch(host))


def host_suffixes(host: str) -> list[str]:
    """The exact host plus up to 4 suffixes formed from its last 5 components down to the last 2."""
    if is_ip_host(host):
        return [host]
    parts = host.split(".")
    start = max(len(parts) - MAX_HOST_SUFFIX_COMPONENTS, 1)
    return [host] + [".".join(parts[i:]) for i in range(start, len(parts) - 1)]


def path_prefixes(path: str, query: str | None) -> list[str]:
    """The exact path with query, the exact path, then `/` and up to 3 more directory prefixes."""
    out = []
    if query is not None:
        out.append(f"{path}?{query}")
    out.append(path)
    components = path[1:].split("/")
    directories = components[:-1]
    for k in range(min(len(directories), MAX_PATH_PREFIXES - 1) + 1):
        out.append("/" + "".join(c + "/" for c in directories[:k]))
    return list(dict.fromkeys(out))


def scoped_expressions(url: str, canonical: CanonicalURL | None = None) -> list[tuple[str, str]]:
    """Lookup expressions of `url` (or of its `canonical` parts, when given) with the scope each one covers:
    `url`, `path` or `host`; those of each host form (`host_forms`) in turn, each pair once."""
    canonical = canonical or parse(url)
    exact_paths = {canonical.path} | ({f"{canonical.path}?{canonical.query}"} if canonical.query is not None else set())
    out: dict[tuple[str, str], None] = {}
    for form in host_forms(canonical.host):
        for i, host in enumerate(host_suffixes(form)):
            for path in path_prefixes(canonical.path, canonical.query):
                if i == 0 and path in exact_paths:
                    scope = "url"
                elif path == "/":
                    scope = "host"
                else:
                    scope = "path"
                out[host + path, scope] = None
    return list(out)


def lookup_expressions(url: str) -> list[str]:
    """Every `host/path` expression whose hash a partner list may hold for `url` (at most 30 per host form).

    A null or empty URL has none.
    """
    try:
        return list(dict.fromkeys(expression for expression, _ in scoped_expressions(url)))
    except ValueError:
        return []
