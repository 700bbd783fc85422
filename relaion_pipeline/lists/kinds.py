"""The list kinds, declared once: what a partner list entry of each kind holds and how it is matched.

Every module that parses, matches, checks or counts list entries reads this registry instead of spelling a
kind's name, its sidecar column or its hash function: a new kind is one `Kind(...)` below plus the code of its
matching, if it is matched in a way no kind is yet (`Match`). The names are the `kind` column of the partner
lists, the merged list and the removals, so they are part of the file formats and never change.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass


class Match(enum.Enum):
    """How the entries of a kind find a shard's rows."""

    URL_EXPRESSION = "url expression"  # a digest of one of the row's canonical lookup expressions (urls.py)
    HOST_SUFFIX = "host suffix"  # the row's host or one of its parent domains (urls.host_forms)
    SIDECAR_EXACT = "sidecar exact"  # equal to a hash of the image bytes in the shard's sidecar
    SIDECAR_NEAR = "sidecar near"  # a PDQ hash within the source's Hamming distance of the sidecar's (near_matching)


_NAME = re.compile(r"[a-z][a-z0-9_]*")
_HOST_RE2 = r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)+$"  # >= 2 labels


@dataclass(frozen=True)
class Kind:
    """One kind of list entry.

    name: the `kind` written in list files, the merged list and the removals.
    match: how its entries are matched (`Match`).
    about: what its value is, in a few words (for documentation and messages).
    hex_digits: a value is exactly this many hex digits, in any case, stored lower-case; None for a host name,
        which `blocklists.normalize_value` validates and `urls.idna_domain` turns into its IDNA form.
    digest: the hashlib function whose hex digest a value is: of a lookup expression (URL_EXPRESSION, where
        the matching query calls DuckDB's function of that name) or of the image bytes (SIDECAR_EXACT, computed
        by `relaion hash-images`); None for the other kinds.
    sidecar_column: the column of the image-hash sidecar its entries are matched against (SIDECAR_*), else None.
    label: the `match` column of its removals (why the row went); None for URL_EXPRESSION, whose removals say
        the scope of the lookup expression that hit (`url`, `path` or `host`).
    """

    name: str
    match: Match
    about: str
    hex_digits: int | None = None
    digest: str | None = None
    sidecar_column: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        def wrong(what: str) -> ValueError:
            return ValueError(f"kind {self.name!r} ({getattr(self.match, 'value', self.match)}): {what}")

        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"kind name {self.name!r} must be lower-case letters, digits and '_', a letter first")
        if not isinstance(self.match, Match):
            raise wrong(f"match must be a Match, got {self.match!r}")
        url, host, sidecar = (self.match is m for m in (Match.URL_EXPRESSION, Match.HOST_SUFFIX, Match.SIDECAR_EXACT))
        if (self.hex_digits is None) != host:
            raise wrong("a host name has no hex_digits; every other kind's value has hex_digits")
        if self.hex_digits is not None and (not isinstance(self.hex_digits, int) or self.hex_digits <= 0):
            raise wrong(f"hex_digits must be a positive whole number, got {self.hex_digits!r}")
        if (self.digest is not None) != (url or sidecar):
            raise wrong("a digest is named exactly for URL-expression and exact sidecar kinds")
        if self.digest is not None:
            if self.digest not in hashlib.algorithms_guaranteed:
                raise wrong(f"digest {self.digest!r} is not a hashlib algorithm")
            if 2 * hashlib.new(self.digest).digest_size != self.hex_digits:
                raise wrong(f"{self.digest} digests have {2 * hashlib.new(self.digest).digest_size} hex digits")
        if (self.sidecar_column is not None) != self.needs_sidecar:
            raise wrong("a sidecar column is named exactly for kinds matched through the sidecar")
        if self.sidecar_column is not None and not _NAME.fullmatch(self.sidecar_column):
            raise wrong(f"sidecar column {self.sidecar_column!r} must be a plain lower-case name")
        if (self.label is None) != url:
            raise wrong("every kind but the URL-expression ones has a fixed label")

    @property
    def needs_sidecar(self) -> bool:
        """Whether its entries can only be matched through the shard's image-hash sidecar."""
        return self.match in (Match.SIDECAR_EXACT, Match.SIDECAR_NEAR)

    @property
    def sql(self) -> str:
        """The name as a SQL string literal: `'pdq'`."""
        return f"'{self.name}'"

    @property
    def pattern(self) -> str:
        """RE2 pattern (also a Python `re` one) of a valid value once normalized (trimmed, lower-case, IDNA)."""
        return _HOST_RE2 if self.hex_digits is None else f"^[0-9a-f]{{{self.hex_digits}}}$"


URL_SHA256 = Kind("url_sha256", Match.URL_EXPRESSION, "SHA-256 of a canonical URL lookup expression", 64, "sha256")
URL_MD5 = Kind("url_md5", Match.URL_EXPRESSION, "MD5 of a canonical URL lookup expression", 32, "md5")
IMAGE_MD5 = Kind("image_md5", Match.SIDECAR_EXACT, "MD5 of the image bytes", 32, "md5", "md5", "image")
IMAGE_SHA1 = Kind("image_sha1", Match.SIDECAR_EXACT, "SHA-1 of the image bytes", 40, "sha1", "sha1", "image")
IMAGE_SHA256 = Kind("image_sha256", Match.SIDECAR_EXACT, "SHA-256 of the image bytes", 64, "sha256", "sha256", "image")
PDQ = Kind("pdq", Match.SIDECAR_NEAR, "PDQ perceptual hash of the image", 64, None, "pdq", "image-near")
DOMAIN = Kind("domain", Match.HOST_SUFFIX, "a host name: it and all its subdomains", label="host")

# Every kind, in the order the parser's messages list them.
ALL: tuple[Kind, ...] = (URL_SHA256, URL_MD5, IMAGE_MD5, IMAGE_SHA1, IMAGE_SHA256, PDQ, DOMAIN)
NAMES = tuple(k.name for k in ALL)
_COLUMNS = [k.sidecar_column for k in ALL if k.sidecar_column]
if len(set(NAMES)) != len(ALL) or len(set(_COLUMNS)) != len(_COLUMNS):
    raise ValueError("list kinds: two kinds share a name or a sidecar column")


def _names(*matches: Match) -> tuple[str, ...]:
    return tuple(k.name for k in ALL if k.match in matches)


# Groups of names, in declaration order, as the matching code uses them.
URL_EXPRESSION = _names(Match.URL_EXPRESSION)  # digests of lookup expressions: url_sha256, url_md5
URL_DERIVED = _names(Match.URL_EXPRESSION, Match.HOST_SUFFIX)  # matched from the URL (the lookup-hash index)
SIDECAR_EXACT = _names(Match.SIDECAR_EXACT)  # exact image hashes
NEAR = _names(Match.SIDECAR_NEAR)  # within a Hamming distance, not by equality
IMAGE = _names(Match.SIDECAR_EXACT, Match.SIDECAR_NEAR)  # need the image-hash sidecar
SIDECAR_COLUMNS = tuple(_COLUMNS)  # md5, sha1, sha256, pdq: one per image kind


def by_name(name: str) -> Kind:
    """The kind called `name`; ValueError naming the known ones otherwise. (A search of ALL, not a dict: the
    digest of the code that makes a cached artifact takes ALL's declarations, `cache.closure`.)"""
    for kind in ALL:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown kind {name!r}: expected one of {', '.join(NAMES)}")


def sidecar_column(name: str) -> str | None:
    """The sidecar column the kind `name` is matched against, None for a kind matched from the URL."""
    return by_name(name).sidecar_column


def sql_list(names) -> str:
    """The kind names as a SQL list for an IN clause, in the order given: `('url_sha256', 'url_md5')`."""
    return "(" + ", ".join(by_name(n).sql for n in names) + ")"
