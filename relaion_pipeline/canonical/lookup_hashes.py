"""The lookup-hash index entries of a batch of URLs, compiled: canonical parts in, (row, scope, sha, md5) out.

What `index.build_sql` computes in DuckDB (every lookup expression's sha256 and md5 prefix, every host
suffix's sha256 prefix for domain lists), at a fraction of its cost: the expressions are never built as
strings, each one is fed piece by piece (host suffix, path prefix, `?`, query) to OpenSSL's SHA-256, the
libcrypto that Python's own hashlib uses (SHA-NI where the CPU has it), called from a numba kernel on both
cores; for MD5, the pieces are copied into lanes of 64 expressions hashed at once (see MD5_LANES). URLs are
canonicalized by the compiled reference (`canonical_kernel`), but for what it leaves to DuckDB's
`url_sql.canonical_parts_sql` (possible IP hosts, IPv6, non-ASCII hosts, URLs without a canonical form): both
give exactly the reference parts, DuckDB a row of parts per host form (a non-ASCII host's IDNA form is a
second one), whose entries are hashed alike.

`available()` says whether libcrypto was found and hashes correctly; without it the index is built by SQL.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import sys

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relaion_pipeline.canonical import canonical_kernel, url_sql
from relaion_pipeline.core.compiled import LAUNCH, call1, call2, call3, string_buffers

URL, PATH, HOST, DOMAIN = 0, 1, 2, 3  # index.SCOPES
SHA, MD5 = 0, 3  # offsets of the two hashes' Init, Update, Final in the address table
_NAMES = ("SHA256_Init", "SHA256_Update", "SHA256_Final", "MD5_Init", "MD5_Update", "MD5_Final")
MEMMOVE = len(_NAMES)  # the address of C's memmove follows them
_SEPARATORS = np.frombuffer(b"/?", np.uint8)  # pieces of expressions that are not in the URL's bytes
_DOTTED_QUAD = f"^(?:{url_sql.DOTTED_QUAD})$"
_functions: np.ndarray | None = None


# MD5 on many expressions at once. OpenSSL's MD5 took ~120 ns per expression, one at a time (MD5 has no CPU
# instruction as SHA-256 has). Expressions of 1 to 4 blocks (up to MD5_LONGEST bytes) are instead gathered,
# padded, per task and per block count, MD5_LANES at a time, and hashed together by `_md5_rounds`, whose
# loop over lanes the compiler turns into vector instructions: ~60 ns an expression, gathering included
# (AVX-512; 14 ns of it the hashing). Longer ones go to OpenSSL. The tests hold the index to hashlib's MD5
# for expressions of every length from 1 to 5 blocks.
MD5_LANES = 64
MD5_CLASSES = 4  # expressions of 1, 2, 3 or 4 blocks
MD5_LONGEST = 64 * MD5_CLASSES - 9  # bytes: the 0x80 and the 8-byte length must fit in the last block
_MD5_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_MD5_CONSTANTS = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]  # RFC 1321's T[i]
_MD5_START = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
# Each task's scratch, in its row of `contexts` after the OpenSSL context (256 bytes) and a digest (64): the
# gathered expressions, their words lane by lane, the lanes' states, how many are gathered, where they go.
MD5_MESSAGES = 64
MD5_WORDS = MD5_MESSAGES + MD5_CLASSES * MD5_LANES * 64 * MD5_CLASSES
MD5_STATES = MD5_WORDS + MD5_CLASSES * 16 * MD5_LANES * 4
MD5_COUNTS = MD5_STATES + 4 * MD5_LANES * 4
MD5_AT = MD5_COUNTS + 8
MD5_ZEROS = MD5_AT + MD5_CLASSES * MD5_LANES * 8  # 64 bytes that stay 0, copied as a message's padding
CONTEXT_BYTES = 256 + MD5_ZEROS + 64


def _md5_rounds_source() -> str:
    """Python source of `_md5_rounds(words, states, blk, count)`: block `blk` of lanes 0..count-1 (RFC 1321's
    64 steps, written out so that the loop over lanes is straight-line code the compiler vectorizes)."""
    functions = ("((b & c) | (~b & d))", "((d & b) | (~d & c))", "(b ^ c ^ d)", "(c ^ (b | ~d))")
    lines = [
        "def _md5_rounds(words, states, blk, count):",
        "    for l in range(count):",
        "        a0, b0, c0, d0 = states[0, l], states[1, l], states[2, l], states[3, l]",
        "        a, b, c, d = a0, b0, c0, d0",
    ]
    for i in range(64):
        word = (i, (5 * i + 1) % 16, (3 * i + 5) % 16, (7 * i) % 16)[i // 16]
        shift = _MD5_SHIFTS[i]
        lines += [
            f"        x = np.uint32(a + np.uint32({functions[i // 16]}) + np.uint32({_MD5_CONSTANTS[i]}) + words[blk, {word}, l])",
            "        a, d, c = d, c, b",
            f"        b = np.uint32(b + np.uint32((x << np.uint32({shift})) | (x >> np.uint32({32 - shift}))))",
        ]
    lines += [
        "        states[0, l], states[1, l] = np.uint32(a0 + a), np.uint32(b0 + b)",
        "        states[2, l], states[3, l] = np.uint32(c0 + c), np.uint32(d0 + d)",
    ]
    return "\n".join(lines)


_generated: dict = {"np": np}
exec(_md5_rounds_source(), _generated)
_md5_rounds = numba.njit(inline="always")(_generated["_md5_rounds"])


@numba.njit(inline="always")
def _byteswap(x):
    """A uint32's bytes in the other order."""
    return np.uint32(
        ((x & np.uint32(0xFF)) << np.uint32(24))
        | ((x & np.uint32(0xFF00)) << np.uint32(8))
        | ((x >> np.uint32(8)) & np.uint32(0xFF00))
        | (x >> np.uint32(24))
    )


@numba.njit(inline="always")
def _md5_scratch(digest):
    """A task's MD5 lanes, in its context row after the digest (see MD5_MESSAGES): (messages, counts, at,
    words, states)."""
    messages = digest[MD5_MESSAGES:MD5_WORDS].reshape((MD5_CLASSES, MD5_LANES, 64 * MD5_CLASSES))
    words = digest[MD5_WORDS:MD5_STATES].view(np.uint32).reshape((MD5_CLASSES, 16, MD5_LANES))
    states = digest[MD5_STATES:MD5_COUNTS].view(np.uint32).reshape((4, MD5_LANES))
    counts = digest[MD5_COUNTS:MD5_AT]  # one byte a class: at most MD5_LANES
    at = digest[MD5_AT : MD5_AT + MD5_CLASSES * MD5_LANES * 8].view(np.int64).reshape((MD5_CLASSES, MD5_LANES))
    return messages, counts, at, words, states


@numba.njit
def _md5_flush(lanes, k, md5_out):
    """Hash the gathered expressions of `k + 1` blocks and write their MD5 prefixes where they go."""
    messages, counts, ats, words, states = lanes
    count = counts[k]
    message_words = messages[k].view(np.uint32)  # (lanes, 64) little-endian words, as MD5 reads them
    for blk in range(k + 1):
        for g in range(16):
            for lane in range(count):
                words[blk, g, lane] = message_words[lane, blk * 16 + g]
    for lane in range(count):
        for j in range(4):
            states[j, lane] = np.uint32(_MD5_START[j])
    for blk in range(k + 1):
        _md5_rounds(words, states, blk, count)
    for lane in range(count):  # the digest's first 8 bytes, big-endian: a's bytes, then b's
        high, low = np.uint64(_byteswap(states[0, lane])), np.uint64(_byteswap(states[1, lane]))
        md5_out[ats[k, lane]] = (high << np.uint64(32)) | low
    counts[k] = 0


@numba.njit
def _md5_later(digest, md5_out, at, n, memmove, p1, n1, p2, n2, p3, n3, p4, n4):
    """Gather the expression of up to four pieces (address, length), `n` bytes in all, padded as MD5 pads it,
    for its prefix to be written to md5_out[at] with the other expressions of its block count, in the lanes
    of the task whose scratch follows `digest` (bytes indexed directly: views cost more than the copy)."""
    k = (n + 8) // 64
    lane = digest[MD5_COUNTS + k]
    start = MD5_MESSAGES + (k * MD5_LANES + lane) * 64 * MD5_CLASSES
    address = digest.ctypes.data + start
    call3(memmove, address, p1, n1)
    if n2 > 0:
        call3(memmove, address + n1, p2, n2)
    if n3 > 0:
        call3(memmove, address + n1 + n2, p3, n3)
    if n4 > 0:
        call3(memmove, address + n1 + n2 + n3, p4, n4)
    end = start + 64 * (k + 1)
    digest[start + n] = 0x80
    call3(memmove, address + n + 1, digest.ctypes.data + MD5_ZEROS, end - 8 - (start + n + 1))
    bits = n * 8
    place = MD5_AT + (k * MD5_LANES + lane) * 8
    for i in range(8):
        digest[end - 8 + i] = (bits >> (8 * i)) & 0xFF
        digest[place + i] = (at >> (8 * i)) & 0xFF
    digest[MD5_COUNTS + k] = lane + 1
    if lane + 1 == MD5_LANES:
        _md5_flush(_md5_scratch(digest), k, md5_out)


@numba.njit(inline="always")
def _prefix(functions, base, context, digest, p1, n1, p2, n2, p3, n3, p4, n4):
    """The first 64 bits, big-endian, of the hash (`base` SHA or MD5) of up to four pieces (address, length)."""
    call1(functions[base], context)
    call3(functions[base + 1], context, p1, n1)
    if n2 > 0:
        call3(functions[base + 1], context, p2, n2)
    if n3 > 0:
        call3(functions[base + 1], context, p3, n3)
    if n4 > 0:
        call3(functions[base + 1], context, p4, n4)
    digest_address = digest.ctypes.data
    call2(functions[base + 2], digest_address, context)
    value = np.uint64(0)
    for b in range(8):
        value = (value << np.uint64(8)) | np.uint64(digest[b])
    return value


@numba.njit
def _put(out, at, write, row, scope, functions, with_md5, ctx, digest, p1, n1, p2, n2, p3, n3, p4, n4):
    """Write entry `at` into the columns `out` (row, scope, sha prefix, md5 prefix) when `write` (else only
    count it); the next `at`."""
    if write:
        out[0][at], out[1][at] = row, scope
        out[2][at] = _prefix(functions, SHA, ctx, digest, p1, n1, p2, n2, p3, n3, p4, n4)
        if with_md5 and scope != DOMAIN:
            n = n1 + n2 + n3 + n4
            if n > MD5_LONGEST:
                out[3][at] = _prefix(functions, MD5, ctx, digest, p1, n1, p2, n2, p3, n3, p4, n4)
            else:
                _md5_later(digest, out[3], at, n, functions[MEMMOVE], p1, n1, p2, n2, p3, n3, p4, n4)
    return at + 1


@numba.njit(inline="always")
def _host_expressions(
    buf, seps, start, h1, exact, p0, p1, q0, q1, ends, n_ends, row, out, at, write, functions, with_md5, ctx, digest
):
    """The lookup expressions of the host suffix buf[start:h1] (`exact`: the whole host) with every path
    prefix, written from `at` on; returns the position after them."""
    base = buf.ctypes.data
    slash, question = seps.ctypes.data, seps.ctypes.data + 1
    host, n_host = base + start, h1 - start
    if q0 >= 0:
        piece = (host, n_host, base + p0, p1 - p0, question, 1, base + q0, q1 - q0)
        at = _put(out, at, write, row, URL if exact else PATH, functions, with_md5, ctx, digest, *piece)
    root = p1 - p0 == 1 and buf[p0] == 47
    scope = URL if exact else (HOST if root else PATH)
    piece = (host, n_host, base + p0, p1 - p0, 0, 0, 0, 0)
    at = _put(out, at, write, row, scope, functions, with_md5, ctx, digest, *piece)
    for k in range(n_ends):
        if buf[p0] == 47 and ends[k] == p1:
            continue  # this prefix is the exact path
        piece = (host, n_host, slash, 1, base + p0 + 1, ends[k] - p0 - 1, 0, 0)
        at = _put(out, at, write, row, HOST if k == 0 else PATH, functions, with_md5, ctx, digest, *piece)
    return at


@numba.njit(inline="always")
def _row(buf, seps, parts, r, row, out, at, write, functions, with_md5, with_domains, ends, ctx, digest):
    """The entries of row r, whose parts are buf[parts[r, 0]:parts[r, 1]] (host), [2:3] (path), [4:5]
    (query; -1: none) and parts[r, 6] (1: an IP host), written from `at` on; returns the position after them.

    Domain entries: the host and its suffixes after every dot but the last (no IPv6 literal). Lookup hosts:
    the host and (not for IPs) the suffixes after dots max(n - 5, 0) .. n - 2 of its n dots. Paths: the exact
    path with the query, without it, then '/' and up to 3 directory prefixes, never the exact path twice.
    No scratch space grows with the host: its dots are counted, then visited in one more pass."""
    h0, h1, p0, p1, q0, q1 = parts[r, 0], parts[r, 1], parts[r, 2], parts[r, 3], parts[r, 4], parts[r, 5]
    n_dots = 0
    for i in range(h0, h1):
        if buf[i] == 46:  # '.'
            n_dots += 1
    n_ends = 1
    ends[0] = p0 + 1  # directory prefix k is '/' + buf[p0 + 1:ends[k]]
    for i in range(p0 + 1, p1):
        if n_ends == 4:
            break
        if buf[i] == 47:  # '/'
            ends[n_ends] = i + 1
            n_ends += 1
    domains = with_domains and n_dots > 0 and not (h1 > h0 and buf[h0] == 91)  # '[': an IPv6 literal
    first = n_dots if parts[r, 6] == 1 else max(n_dots - 5, 0)
    base = buf.ctypes.data
    if domains:
        at = _put(out, at, write, row, DOMAIN, functions, with_md5, ctx, digest, base + h0, h1 - h0, 0, 0, 0, 0, 0, 0)
    at = _host_expressions(
        buf, seps, h0, h1, True, p0, p1, q0, q1, ends, n_ends, row, out, at, write, functions, with_md5, ctx, digest
    )
    dot = -1
    for i in range(h0, h1):
        if buf[i] != 46:
            continue
        dot += 1
        if dot > n_dots - 2:
            break
        if domains:
            piece = (base + i + 1, h1 - i - 1, 0, 0, 0, 0, 0, 0)
            at = _put(out, at, write, row, DOMAIN, functions, with_md5, ctx, digest, *piece)
        if dot >= first:
            at = _host_expressions(
                buf, seps, i + 1, h1, False, p0, p1, q0, q1, ends, n_ends, row, out, at, write, functions, with_md5,
                ctx, digest,
            )  # fmt: skip
    return at


CHUNKS = 64  # tasks per batch for the two threads: rows of very different lengths still spread evenly


@numba.njit(parallel=True, cache=True)
def _count_entries(buf, seps, rows, parts, functions, with_md5, with_domains, all_ends, contexts, counts):
    """counts[r + 1] = the number of entries of row r (see `_row`), nothing hashed."""
    n = rows.shape[0]
    nothing = (np.empty(0, np.uint32), np.empty(0, np.uint8), np.empty(0, np.uint64), np.empty(0, np.uint64))
    for c in numba.prange(CHUNKS):
        ends, context = all_ends[c], contexts[c]
        for r in range(c * n // CHUNKS, (c + 1) * n // CHUNKS):
            end = _row(
                buf, seps, parts, r, rows[r], nothing, 0, False, functions, with_md5, with_domains, ends, 0, context
            )
            counts[r + 1] = end


@numba.njit(parallel=True, cache=True)
def _write_entries(buf, seps, rows, parts, functions, with_md5, with_domains, all_ends, contexts, starts, out):
    """Write the entries of every row r into the columns `out` from starts[r] on; False when they do not add
    up."""
    n = rows.shape[0]
    written = np.zeros(n, np.int64)  # used, so that numba does not drop the loop as free of effects
    for c in numba.prange(CHUNKS):
        ends, context = all_ends[c], contexts[c]
        ctx, digest = context.ctypes.data, context[256:]
        for r in range(c * n // CHUNKS, (c + 1) * n // CHUNKS):
            end = _row(
                buf, seps, parts, r, rows[r], out, starts[r], True, functions, with_md5, with_domains, ends, ctx, digest
            )
            written[r] = end
        lanes = _md5_scratch(digest)
        for k in range(MD5_CLASSES):  # what this task gathered and has not hashed yet
            if lanes[1][k] > 0:
                _md5_flush(lanes, k, out[3])
    return n == 0 or written[n - 1] == starts[n]


def _entries(buf, seps, rows, parts, functions, with_md5, with_domains=True) -> tuple[np.ndarray, ...]:
    """Index entries (columns: row uint32, scope uint8, sha prefix, md5 prefix uint64; no md5 column's worth
    without `with_md5`) of the rows whose canonical parts `parts` locates in `buf` (see `_row`): counted
    first, then written in place, into arrays of numpy's (advised into huge pages: ~50-100 MB a batch that
    would otherwise fault in 4 KiB at a time). Per-task scratch is allocated here, not in the parallel loop,
    which would share it."""
    n = rows.shape[0]
    all_ends = np.empty((CHUNKS, 4), np.int64)
    contexts = np.empty((CHUNKS, CONTEXT_BYTES), np.uint8)  # an OpenSSL context, a digest, the MD5 lanes
    contexts[:, 256 + MD5_COUNTS : 256 + MD5_AT] = 0  # no expression gathered yet
    contexts[:, 256 + MD5_ZEROS :] = 0
    counts = np.zeros(n + 1, np.int64)
    _count_entries(buf, seps, rows, parts, functions, with_md5, with_domains, all_ends, contexts, counts)
    starts = np.cumsum(counts)
    total = int(starts[n])
    md5 = np.zeros(total if with_md5 else 0, np.uint64)
    out = (np.empty(total, np.uint32), np.empty(total, np.uint8), np.empty(total, np.uint64), md5)
    if not _write_entries(buf, seps, rows, parts, functions, with_md5, with_domains, all_ends, contexts, starts, out):
        raise AssertionError("lookup hashes: entries written do not add up")
    return out


def _crypto() -> np.ndarray | None:
    """Addresses of OpenSSL's SHA-256 and MD5 functions in the libcrypto of Python's hashlib (and of C's
    memmove), once checked to hash like hashlib; None when there is none (a Python built without OpenSSL)
    or the CPU is big-endian (the MD5 lanes read little-endian words)."""
    if sys.byteorder != "little":
        return None
    try:
        import _hashlib

        library = ctypes.CDLL(_hashlib.__file__)  # its symbols include those of the libcrypto it links
        addresses = [ctypes.cast(getattr(library, n), ctypes.c_void_p).value for n in _NAMES]
        functions = np.array([*addresses, ctypes.cast(ctypes.memmove, ctypes.c_void_p).value], np.int64)
    except (ImportError, OSError, AttributeError):
        return None
    probe = b"a.b.example/1/2.html?q=%20"
    parts = np.array([[0, 9, 9, 20, 21, 26, 0]], np.int64)
    out = _entries(np.frombuffer(probe, np.uint8).copy(), _SEPARATORS, np.zeros(1, np.uint32), parts, functions, True)
    url = [column[out[1] == URL][0] for column in out]
    expected = hashlib.sha256(probe).digest()[:8], hashlib.md5(probe).digest()[:8]
    return functions if (int(url[2]).to_bytes(8, "big"), int(url[3]).to_bytes(8, "big")) == expected else None


def available() -> bool:
    """Whether the compiled path can be used (OpenSSL found and checked); the first call compiles the kernels
    or loads them from numba's cache."""
    global _functions
    if _functions is None:
        _functions = _crypto()
        if _functions is None:
            _functions = np.zeros(0, np.int64)
    return _functions.size > 0


def _table(out: tuple[np.ndarray, ...], with_md5: bool) -> pa.Table:
    """The index's columns of `_entries`' result (md5 null for domain entries and without `with_md5`)."""
    rows, scopes, sha, md5 = out
    md5 = pa.array(md5, pa.uint64(), mask=scopes == DOMAIN) if with_md5 else pa.nulls(len(rows), pa.uint64())
    return pa.table({"row_number": rows, "scope": scopes, "sha": sha, "md5": md5})


def entries(
    rows: np.ndarray, urls: pa.Array, general, with_md5: bool, with_domains: bool = True
) -> tuple[pa.Table, np.ndarray]:
    """The index entries of a batch of URLs with their row numbers, and the row numbers of URLs that have no
    canonical form. `general(table of row_number, url)` canonicalizes what the kernel leaves: it returns
    row_number, host, path, query, the parts null for a URL with none, one row per host form
    (`url_sql.canonical_parts_sql`)."""
    if not available():
        raise RuntimeError("the compiled lookup hashes need OpenSSL's libcrypto, which this Python does not have")
    rows = np.asarray(rows, dtype=np.uint32)
    offsets, data, valid = string_buffers(urls)
    with LAUNCH:
        buf, parts = canonical_kernel.canonicalize(data, offsets, valid, canonical_kernel.HEX_DIGITS)
    decided = parts[:, 0] >= 0
    parts = parts[decided]
    with LAUNCH:
        out = _entries(buf, _SEPARATORS, rows[decided], parts, _functions, with_md5, with_domains)
    tables = [_table(out, with_md5)]
    rest = np.flatnonzero(valid & ~decided)
    unusable = np.zeros(0, np.int64)
    if rest.size:
        canonical = general(
            pa.table({"row_number": pa.array(rows[rest], pa.int64()), "url": urls.take(pa.array(rest))})
        )
        none = canonical.column("host").is_null()
        unusable = np.asarray(pc.filter(canonical.column("row_number"), none), dtype=np.int64)
        canonical = canonical.filter(pc.invert(none))
        if canonical.num_rows:
            tables.append(_parts_entries(canonical, with_md5, with_domains))
    return pa.concat_tables(tables), unusable


def _parts_entries(canonical: pa.Table, with_md5: bool, with_domains: bool) -> pa.Table:
    """Index entries of canonical parts (row_number, host, path, query), as DuckDB derived them."""
    buffers, columns = [], []
    base = 0
    for name in ("host", "path", "query"):
        offsets, data, valid = string_buffers(canonical.column(name))
        buffers.append(data)
        columns += [np.where(valid, offsets[:-1] + base, -1), np.where(valid, offsets[1:] + base, -1)]
        base += len(data)
    host = canonical.column("host")
    is_ip = pc.or_(pc.match_substring_regex(host, _DOTTED_QUAD), pc.starts_with(host, "["))
    parts = np.stack([*columns, np.asarray(is_ip, dtype=np.int64)], axis=1)
    rows = np.asarray(canonical.column("row_number"), dtype=np.uint32)
    with LAUNCH:
        out = _entries(np.concatenate(buffers), _SEPARATORS, rows, parts, _functions, with_md5, with_domains)
    return _table(out, with_md5)
