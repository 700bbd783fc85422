"""The reference canonicalization (`urls.parse`) compiled, byte for byte, for the URLs of a batch.

Each URL's canonical host, path and query are written, escaped, to an output buffer; what this kernel does
not take on is marked for DuckDB's canonicalization (`url_sql.canonical_parts_sql`, whose last tier is the
reference itself): IPv4 addresses in another encoding than the dotted quad written in fewer than 5 bytes,
IPv6 literals, URLs with no canonical form, and hosts with a byte >= 0x80 (they are matched in their IDNA form
too, `urls.host_forms`, which the reference derives: rare, and the one test ASCII hosts pay is a comparison
per host byte). The steps, as in `urls.parse`: drop the fragment, strip ASCII
whitespace, remove tab/CR/LF, percent-unescape until nothing changes, split off a `scheme://`, the query at
the first `?` and the path at the first `/`; the host loses user info, a port, repeated and outer dots, and
is lower-cased; the path's `.`, `..` and empty segments are resolved; every part is then escaped (bytes
<= 0x20, >= 0x7f, `#`, `%` as upper-case %XX).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from relaion_pipeline.core.compiled import string_buffers

HEX_DIGITS = np.frombuffer(b"0123456789ABCDEF", np.uint8).copy()  # upper case, as escaping writes them


@numba.njit(inline="always")
def _hex_value(c):
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return -1


@numba.njit(inline="always")
def _is_space(c):
    return c == 32 or 9 <= c <= 13  # bytes.strip(): space, \t, \n, \v, \f, \r


@numba.njit(inline="always")
def _dotted_quad(out, start, end):
    """Whether out[start:end] is four decimal numbers 0-255 without leading zeros, joined by dots: an IPv4
    address the reference leaves as it is."""
    parts, digits, value = 0, 0, 0
    for i in range(start, end + 1):
        c = out[i] if i < end else 46
        if c == 46:
            if digits == 0 or value > 255:
                return False
            parts += 1
            digits, value = 0, 0
        elif 48 <= c <= 57:
            if digits > 0 and value == 0:
                return False  # a leading zero: octal, which the reference converts
            digits += 1
            value = value * 10 + (c - 48)
            if digits > 3:
                return False
        else:
            return False
    return parts == 4


@numba.njit(inline="always")
def _possible_ip(out, start, end):
    """Whether the lower-cased host out[start:end] is one the reference tries to read as an IPv4 address: a
    full match of `urls._POSSIBLE_IP`, `(?:0x[0-9a-f]+|[0-9.])+`. Between dots that is decimal digits, or
    digits ending in `0` before an `x`; after each `x` at least one hex digit, and one more (the next `0`)
    before another `x`. A hex letter anywhere else (`cafe.de`) makes the host a name."""
    hex_run = -1  # hex digits since the last 'x' of this label; -1: no 'x' yet, decimal digits only
    for i in range(start, end):
        c = out[i]
        if c == 46:  # '.'
            if hex_run == 0:
                return False
            hex_run = -1
        elif c == 120:  # 'x'
            if i == start or out[i - 1] != 48 or hex_run == 0 or hex_run == 1:
                return False  # no '0' before it, or it would take the previous 'x''s only hex digit
            hex_run = 0
        elif 48 <= c <= 57:
            if hex_run >= 0:
                hex_run += 1
        elif 97 <= c <= 102 and hex_run >= 0:
            hex_run += 1
        else:
            return False
    return end > start and hex_run != 0


@numba.njit(inline="always")
def _ipv4(out, start, end):
    """The IPv4 address (0 .. 2**32 - 1) that the possible IP host out[start:end] encodes as `urls._normalize_ip`
    reads it: up to four dot-separated numbers, each 0x hex, 0-led octal or decimal, all but the last at most
    255, the last filling the remaining bytes; -1 when it is not one (a name)."""
    too_big = np.int64(1) << 33
    value = np.int64(0)
    parts = 0
    i = start
    while i < end:
        j = i
        while j < end and out[j] != 46:
            j += 1
        parts += 1
        if parts > 4 or j == i:
            return -1
        base, k = 10, i
        if j - i >= 2 and out[i] == 48 and out[i + 1] == 120:
            base, k = 16, i + 2
        elif j - i >= 2 and out[i] == 48:
            base, k = 8, i + 1
        number = np.int64(0)
        for m in range(k, j):
            digit = _hex_value(out[m])
            if digit < 0 or digit >= base:
                return -1  # e.g. an 'x' inside a hex number, or 8 in an octal one
            number = min(number * base + digit, too_big)
        last = j == end
        if not last and number > 255:
            return -1
        if last:
            room = np.int64(1) << (8 * (5 - parts))
            if number >= room:
                return -1
            value = (value << (8 * (5 - parts))) + number
        else:
            value = (value << 8) + number
        i = j + 1
    return value if parts > 0 else -1


@numba.njit(inline="always")
def _write_dotted(out, at, value):
    """Write the IPv4 address `value` as a dotted quad at out[at:]; returns the end position."""
    for shift in (24, 16, 8, 0):
        octet = (value >> shift) & 255
        if octet >= 100:
            out[at] = 48 + octet // 100
            at += 1
        if octet >= 10:
            out[at] = 48 + (octet // 10) % 10
            at += 1
        out[at] = 48 + octet % 10
        at += 1
        if shift:
            out[at] = 46
            at += 1
    return at


@numba.njit(inline="always")
def _put_escaped(c, out, at, hex_digits):
    """Write byte c to out[at:] as `urls._escape` does (bytes <= 0x20, >= 0x7f, '#', '%' as %XX); the next at."""
    if c <= 32 or c >= 127 or c == 35 or c == 37:
        out[at] = 37
        out[at + 1] = hex_digits[c >> 4]
        out[at + 2] = hex_digits[c & 15]
        return at + 3
    out[at] = c
    return at + 1


@numba.njit(inline="always")
def _escape_into(src, start, end, out, at, hex_digits):
    """Copy src[start:end] to out[at:], escaped; returns the end position."""
    for i in range(start, end):
        at = _put_escaped(src[i], out, at, hex_digits)
    return at


@numba.njit(inline="always")
def _unescape(a, n, b):
    """One pass of percent-unescaping a[:n] into b; returns (length, whether anything was decoded)."""
    m = 0
    i = 0
    changed = False
    while i < n:
        c = a[i]
        if c == 37 and i + 2 < n and _hex_value(a[i + 1]) >= 0 and _hex_value(a[i + 2]) >= 0:
            b[m] = _hex_value(a[i + 1]) * 16 + _hex_value(a[i + 2])
            i += 3
            changed = True
        else:
            b[m] = c
            i += 1
        m += 1
    return m, changed


@numba.njit(inline="always")
def _one(data, start, end, work, other, segments, out, at, hex_digits):
    """Canonical parts of data[start:end] written to out from `at`: (host start, host end, path start, path
    end, query start, query end, next free position, whether the host is an IP address); host start -1 when
    DuckDB has to decide."""
    undecided = (-1, 0, 0, 0, -1, -1, at, False)
    for i in range(start, end):  # the fragment is dropped first, before anything is unescaped
        if data[i] == 35:
            end = i
            break
    while start < end and _is_space(data[start]):
        start += 1
    while end > start and _is_space(data[end - 1]):
        end -= 1
    n = 0
    for i in range(start, end):
        c = data[i]
        if c != 9 and c != 10 and c != 13:
            work[n] = c
            n += 1
    while True:
        n, changed = _unescape(work, n, other)
        work, other = other, work
        if not changed:
            break
    if n == 0:
        return undecided
    # scheme: [A-Za-z][A-Za-z0-9+.-]* followed by '://'
    rest = 0
    c = work[0]
    if 97 <= (c | 32) <= 122:  # a letter
        i = 1
        while i < n:
            c = work[i]
            if 97 <= (c | 32) <= 122 or 48 <= c <= 57 or c == 43 or c == 46 or c == 45:
                i += 1
            else:
                break
        if i + 2 < n and work[i] == 58 and work[i + 1] == 47 and work[i + 2] == 47:
            rest = i + 3
    query = -1
    for i in range(rest, n):
        if work[i] == 63:  # '?'
            query = i
            break
    before = query if query >= 0 else n
    slash = before
    for i in range(rest, before):
        if work[i] == 47:
            slash = i
            break
    # host: after the last '@', without a port, repeated dots collapsed, outer dots stripped
    h0, h1 = rest, slash
    for i in range(h1 - 1, h0 - 1, -1):
        if work[i] == 64:  # '@'
            h0 = i + 1
            break
    if h0 < h1 and work[h0] == 91:  # '[': an IPv6 literal
        return undecided
    for i in range(h1 - 1, h0 - 1, -1):
        c = work[i]
        if c == 58:  # ':' followed by digits only: a port
            h1 = i
            break
        if not 48 <= c <= 57:
            break
    host_start = at
    ip_like = True
    for i in range(h0, h1):
        c = work[i]
        if c >= 128:
            return undecided  # a non-ASCII host: it has an IDNA form as well
        if c == 46 and (at == host_start or out[at - 1] == 46):
            continue  # a leading or repeated dot
        if not (c == 46 or 48 <= c <= 57 or 97 <= (c | 32) <= 102 or (c | 32) == 120):
            ip_like = False
        at = _put_escaped(c | 32 if 65 <= c <= 90 else c, out, at, hex_digits)
    while at > host_start and out[at - 1] == 46:
        at -= 1  # a trailing dot
    if at == host_start or out[host_start] == 91:
        return undecided  # no host, or an IPv6 literal
    is_ip = False
    if ip_like and _possible_ip(out, host_start, at):
        is_ip = _dotted_quad(out, host_start, at)
        address = -1 if is_ip else _ipv4(out, host_start, at)
        if address >= 0:  # an IPv4 address in another encoding, normalized to its dotted quad
            if h1 - h0 < 5:
                return undecided  # the quad may not fit where this row's output may go (3 bytes an input byte)
            at = _write_dotted(out, host_start, address)
            is_ip = True
    host_end = at
    # path: '.', '..' and empty segments resolved
    depth = 0
    i = slash
    while i < before:
        j = i + 1
        while j < before and work[j] != 47:
            j += 1
        s0 = i + 1  # segment work[s0:j]
        length = j - s0
        if length == 0 or (length == 1 and work[s0] == 46):
            pass
        elif length == 2 and work[s0] == 46 and work[s0 + 1] == 46:
            if depth > 0:
                depth -= 1
        else:
            segments[depth, 0], segments[depth, 1] = s0, j
            depth += 1
        i = j
    path_start = at
    out[at] = 47
    at += 1
    for k in range(depth):
        if k > 0:
            out[at] = 47
            at += 1
        at = _escape_into(work, segments[k, 0], segments[k, 1], out, at, hex_digits)
    if before > slash and work[before - 1] == 47 and at - path_start > 1:
        out[at] = 47
        at += 1
    path_end = at
    if query < 0:
        return host_start, host_end, path_start, path_end, -1, -1, at, is_ip
    query_start = at
    at = _escape_into(work, query + 1, n, out, at, hex_digits)
    return host_start, host_end, path_start, path_end, query_start, at, at, is_ip


CHUNKS = 64
LONGEST = 16_384  # bytes: longer URLs are left to DuckDB, so that each task's scratch space stays small


@numba.njit(parallel=True, cache=True)
def _canonicalize(data, offsets, valid, hex_digits, out, parts, works, segments):
    """`canonicalize` into the given arrays (`parts` filled with -1)."""
    n = offsets.shape[0] - 1
    for c in numba.prange(CHUNKS):
        for r in range(c * n // CHUNKS, (c + 1) * n // CHUNKS):
            if not valid[r] or offsets[r + 1] - offsets[r] > LONGEST:
                continue
            at = 3 * (offsets[r] - offsets[0]) + r
            result = _one(data, offsets[r], offsets[r + 1], works[c, 0], works[c, 1], segments[c], out, at, hex_digits)
            h0, h1, p0, p1, q0, q1, _, is_ip = result
            parts[r, 0], parts[r, 1], parts[r, 2], parts[r, 3], parts[r, 4], parts[r, 5] = h0, h1, p0, p1, q0, q1
            parts[r, 6] = 1 if is_ip else 0


def canonicalize(data, offsets, valid, hex_digits):
    """Canonical parts of every URL data[offsets[r]:offsets[r + 1]] of a batch: the escaped bytes and, per row,
    host, path and query start/end in them (query start -1: no query; host start -1: not decided here, or
    a null URL) and 1 for a host that is an IP address. Row r's parts lie within out[3 * offsets[r] + r:], so
    rows never overlap. The large arrays are numpy's (advised into huge pages: a batch's ~100 MB would
    otherwise fault in 4 KiB at a time, in every batch)."""
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    kept = lengths[lengths <= LONGEST]
    longest = max(int(kept.max()) if kept.size else 1, 1)
    out = np.empty(3 * (int(offsets[n]) - int(offsets[0])) + n + 1, np.uint8)
    parts = np.full((n, 7), -1, np.int64)
    works = np.empty((CHUNKS, 2, longest), np.uint8)
    segments = np.empty((CHUNKS, longest + 1, 2), np.int64)
    _canonicalize(data, offsets, valid, hex_digits, out, parts, works, segments)
    return out, parts


def parts_of(values: list[str | None]) -> list[tuple[str, str, str | None] | None]:
    """(host, path, query) per URL as this kernel canonicalizes it, None where it leaves the URL to DuckDB."""
    offsets, data, valid = string_buffers(pa.array(values, pa.large_string()))
    out, parts = canonicalize(data, offsets, valid, HEX_DIGITS)
    text = out.tobytes()
    result = []
    for h0, h1, p0, p1, q0, q1, _ in parts.tolist():
        if h0 < 0:
            result.append(None)
        else:
            query = text[q0:q1].decode("ascii") if q0 >= 0 else None
            result.append((text[h0:h1].decode("ascii"), text[p0:p1].decode("ascii"), query))
    return result
