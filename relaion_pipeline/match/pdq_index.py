"""The in-memory multi-index of a list's PDQ entries, searched by a compiled kernel: how a shard's sidecar
hashes are near-matched at ~100k hashes per second against a million entries, and ~1M a second against 50k,
on two cores.

The same multi-index hashing as `pdq.near_matches_sql` (16 slots of 16 bits; a pair within d bits shares a
slot within floor(d / 16) bits), laid out for the memory system: per slot, both sides sorted by their slot
value (a compiled counting sort) with their first two words copied in that order, so a bucket is one
contiguous run, and the probing side visited in slot order, so consecutive probes read neighbouring buckets.
The smaller side probes: a batch of queries against a large list, or a small list's entries against a
batch's buckets (272 probes per prober at distance 31). Two words (128 bits) reject every unrelated candidate
before the other two are read. numba compiles the kernels once (cached on disk); DuckDB's join
(`pdq.near_matches_sql`) gives the same pairs at ~4-8k hashes per second and is the reference the tests hold
this to, beside brute force.

Memory: 384 bytes per entry (384 MB for 1M entries), plus as much per query of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from relaion_pipeline.core.compiled import LAUNCH, popcount, string_buffers
from relaion_pipeline.lists import pdq

MASKS_BY_RADIUS = {
    r: np.array([m for m in range(1 << pdq.SLOT_BITS) if m.bit_count() <= r], dtype=np.int64) for r in range(4)
}


PARTS = 4  # tasks per slot: each takes a quarter of the probing side, in slot order


@numba.njit(inline="always")
def _slot(words, i, s):
    """The 16-bit value of slot `s` (0..15) of hash `i` of (n, 4) words."""
    return (words[i, s // 4] >> np.uint64(16 * (3 - s % 4))) & np.uint64(0xFFFF)


@numba.njit(inline="always")
def _found(found_a, found_b, found_d, task, count, a, b, d):
    """Keep the pair (a, b) at distance d as the task's `count`-th, if it has room (its capacity): the count
    goes on, so that the caller sees an overflow."""
    if count < found_a.shape[1]:
        found_a[task, count] = a
        found_b[task, count] = b
        found_d[task, count] = np.int16(d)
    return count + 1


@numba.njit(parallel=True, cache=True)
def _search(
    probers, prober_order, prober_slots, head, order, offsets, words, limits, prober_limits, masks, reach, capacity
):
    """Every (prober, bucket member, distance) within the entry's limit (`limits` are the probers' when
    `prober_limits`, else the bucket members'), per (slot, part of the probers) task; overflowing tasks are
    flagged by a count above `capacity` (the caller retries with room to spare). Either side can probe: the
    list's entries the buckets of a batch of queries, or the queries the list's buckets."""
    n = probers.shape[0]
    tasks = pdq.SLOTS * PARTS
    found_p = np.full((tasks, capacity), -1, np.int64)
    found_b = np.zeros((tasks, capacity), np.int64)
    found_d = np.zeros((tasks, capacity), np.int16)
    counts = np.zeros(tasks, np.int64)
    for task in numba.prange(tasks):
        s, part = task // PARTS, task % PARTS
        count = 0
        for i in range(part * n // PARTS, (part + 1) * n // PARTS):
            value = prober_slots[s, i]
            p = -1
            p0 = p1 = np.uint64(0)
            for m in range(masks.shape[0]):
                probe = value ^ masks[m]
                start, end = offsets[s, probe], offsets[s, probe + 1]
                if start == end:
                    continue
                if p < 0:
                    p = prober_order[s, i]
                    p0, p1 = probers[p, 0], probers[p, 1]
                for j in range(start, end):
                    d = popcount(p0 ^ head[s, j, 0]) + popcount(p1 ^ head[s, j, 1])
                    if d > reach:
                        continue
                    b = order[s, j]
                    d += popcount(probers[p, 2] ^ words[b, 2]) + popcount(probers[p, 3] ^ words[b, 3])
                    if d <= np.uint64(limits[p] if prober_limits else limits[b]):
                        count = _found(found_p, found_b, found_d, task, count, p, b, d)
        counts[task] = count
    return found_p, found_b, found_d, counts


@dataclass
class _Sorted:
    """One side of a search, per slot in order of slot value: what probing with it and into it takes."""

    words: np.ndarray  # (n, 4) uint64
    order: np.ndarray  # (16, n) int32: positions sorted by slot value, per slot
    slot_values: np.ndarray  # (16, n) uint16: the slot values in that order
    offsets: np.ndarray  # (16, 65537) int64: where each slot value's bucket starts
    head: np.ndarray  # (16, n, 2) uint64: words 0 and 1 in that order

    @classmethod
    def of(cls, words: np.ndarray) -> _Sorted:
        words = np.ascontiguousarray(words, dtype=np.uint64)
        with LAUNCH:
            return cls(words, *_counting_sort(words))


@numba.njit(parallel=True, cache=True)
def _counting_sort(words):
    """Per slot, a stable counting sort of the hashes by slot value: order, slot values, offsets, head."""
    n = words.shape[0]
    buckets = 1 << pdq.SLOT_BITS
    order = np.empty((pdq.SLOTS, n), np.int32)
    values = np.empty((pdq.SLOTS, n), np.uint16)
    offsets = np.zeros((pdq.SLOTS, buckets + 1), np.int64)
    head = np.empty((pdq.SLOTS, n, 2), np.uint64)
    for s in numba.prange(pdq.SLOTS):
        for i in range(n):
            offsets[s, _slot(words, i, s) + 1] += 1
        for v in range(buckets):
            offsets[s, v + 1] += offsets[s, v]
        at = offsets[s, :buckets].copy()
        for i in range(n):
            v = _slot(words, i, s)
            j = at[v]
            at[v] += 1
            order[s, j] = i
            values[s, j] = v
            head[s, j, 0], head[s, j, 1] = words[i, 0], words[i, 1]
    return order, values, offsets, head


@numba.njit(parallel=True, cache=True)
def _expand(words, masks):
    """Per slot, the entries under every slot value within the radius of their own (each value flipped by every
    mask): offsets (16, 65537) and entry numbers (16, n * masks), so that a query's 16 slot values are its 16
    probes."""
    n, k = words.shape[0], masks.shape[0]
    buckets = 1 << pdq.SLOT_BITS
    offsets = np.zeros((pdq.SLOTS, buckets + 1), np.int64)
    members = np.empty((pdq.SLOTS, n * k), np.int32)
    for s in numba.prange(pdq.SLOTS):
        for i in range(n):
            v = _slot(words, i, s)
            for m in range(k):
                offsets[s, (v ^ np.uint64(masks[m])) + 1] += 1
        for v in range(buckets):
            offsets[s, v + 1] += offsets[s, v]
        at = offsets[s, :buckets].copy()
        for i in range(n):
            v = _slot(words, i, s)
            for m in range(k):
                x = v ^ np.uint64(masks[m])
                members[s, at[x]] = i
                at[x] += 1
    return offsets, members


@numba.njit(parallel=True, cache=True)
def _search_expanded(queries, offsets, members, words, limits, radius, capacity):
    """Every (query, entry, distance) within the entry's limit, per task of consecutive queries: each query
    reads the 16 buckets of its own slot values. A pair is kept in the first slot it shares (within the
    radius), so it is found once. Overflowing tasks are flagged by a count above `capacity`."""
    n = queries.shape[0]
    tasks = 64
    found_q = np.full((tasks, capacity), -1, np.int64)
    found_e = np.zeros((tasks, capacity), np.int64)
    found_d = np.zeros((tasks, capacity), np.int16)
    counts = np.zeros(tasks, np.int64)
    for task in numba.prange(tasks):
        count = 0
        for q in range(task * n // tasks, (task + 1) * n // tasks):
            q0, q1, q2, q3 = queries[q, 0], queries[q, 1], queries[q, 2], queries[q, 3]
            for s in range(pdq.SLOTS):
                v = _slot(queries, q, s)
                for j in range(offsets[s, v], offsets[s, v + 1]):
                    e = members[s, j]
                    d = popcount(q0 ^ words[e, 0]) + popcount(q1 ^ words[e, 1])
                    if d > np.uint64(limits[e]):
                        continue
                    d += popcount(q2 ^ words[e, 2]) + popcount(q3 ^ words[e, 3])
                    if d > np.uint64(limits[e]):
                        continue
                    first = True  # not already found in an earlier slot
                    for t in range(s):
                        if popcount(_slot(queries, q, t) ^ _slot(words, e, t)) <= np.uint64(radius):
                            first = False
                            break
                    if first:
                        count = _found(found_q, found_e, found_d, task, count, q, e, d)
        counts[task] = count
    return found_q, found_e, found_d, counts


def _with_room(search):
    """The pairs `search(capacity)` finds (a kernel giving pairs and per-task counts), with room for them all:
    when many near copies overflow a task's capacity, searched again with as much room as the fullest needed."""
    capacity = CAPACITY
    while True:
        with LAUNCH:
            *pairs, counts = search(capacity)
        if counts.max() <= capacity:
            return pairs
        capacity = int(counts.max())


EXPANDED_PROBES = 1 << 16  # entries x masks up to which queries read an expanded index (16 x 4 bytes each)
CAPACITY = 16384  # matches one task holds at first (64 tasks x 16384 x 18 bytes = 19 MB); more: searched again


@dataclass
class PdqIndex:
    entries: _Sorted
    limits: np.ndarray  # (n,) int16: each entry's match distance
    expanded: tuple[np.ndarray, np.ndarray] | None = None  # `_expand`'s, for a small list: built on first use

    @property
    def words(self) -> np.ndarray:
        return self.entries.words

    @classmethod
    def build(cls, hexes: list[str], limits: np.ndarray) -> PdqIndex:
        return cls(_Sorted.of(pdq.to_words(hexes)), np.asarray(limits, dtype=np.int16))

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, entry index, distance) of every pair within the entry's limit, each pair once.

        The smaller side probes the other's buckets: a batch of queries larger than the list is sorted like
        the list (~0.1 s for 262k) and probed by the entries, 272 probes an entry instead of 272 a query."""
        empty = np.zeros(0, np.int64)
        if not len(queries) or not len(self.words):
            return empty, empty, empty.astype(np.int16)
        reach = int(self.limits.max())
        masks = MASKS_BY_RADIUS[pdq.radius(reach)]
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        if len(self.words) * len(masks) <= EXPANDED_PROBES:
            return self._search_expanded(queries, masks, pdq.radius(reach))
        by_entries = len(queries) > len(self.words)
        batch = _Sorted.of(queries)
        probers, buckets = (self.entries, batch) if by_entries else (batch, self.entries)
        fp, fb, fd = _with_room(
            lambda capacity: _search(
                probers.words,
                probers.order,
                probers.slot_values,
                buckets.head,
                buckets.order,
                buckets.offsets,
                buckets.words,
                self.limits,
                by_entries,
                masks,
                np.uint64(reach),
                capacity,
            )  # fmt: skip
        )
        keep = fp >= 0
        fq, fe = (fb[keep], fp[keep]) if by_entries else (fp[keep], fb[keep])
        pairs = np.unique(np.stack([fq, fe, fd[keep].astype(np.int64)], axis=1), axis=0)
        return pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.int16)

    def _search_expanded(self, queries: np.ndarray, masks: np.ndarray, radius: int):
        """`search` for a small list (a list change, a small partner list): its entries are expanded once, each
        under all its slot values within the radius, so no batch of queries is sorted (the sort was ~0.1 s for
        262k queries, most of the time against a thousand entries)."""
        if self.expanded is None:
            with LAUNCH:
                self.expanded = _expand(self.words, masks)
        offsets, members = self.expanded
        fq, fe, fd = _with_room(
            lambda capacity: _search_expanded(
                queries, offsets, members, self.words, self.limits, np.uint64(radius), capacity
            )
        )
        keep = fq >= 0
        fq, fe, fd = fq[keep], fe[keep], fd[keep]
        order = np.lexsort((fe, fq))
        return fq[order], fe[order], fd[order]


@numba.njit(parallel=True, cache=True)
def _compare_all(queries, entries, limits):
    """Per query, the count and the (entry, distance) pairs within each entry's limit, comparing every pair."""
    n, m = queries.shape[0], entries.shape[0]
    counts = np.zeros(n, np.int64)
    for q in numba.prange(n):
        for e in range(m):
            d = 0
            for w in range(4):
                d += popcount(queries[q, w] ^ entries[e, w])
            if d <= limits[e]:
                counts[q] += 1
    starts = np.zeros(n + 1, np.int64)
    starts[1:] = np.cumsum(counts)
    found = np.empty((starts[n], 3), np.int64)
    for q in numba.prange(n):
        at = starts[q]
        for e in range(m):
            d = 0
            for w in range(4):
                d += popcount(queries[q, w] ^ entries[e, w])
            if d <= limits[e]:
                found[at, 0], found[at, 1], found[at, 2] = q, e, d
                at += 1
    return found


def brute_force(queries: np.ndarray, entries: np.ndarray, limits: np.ndarray) -> set[tuple[int, int, int]]:
    """What `pdq.brute_force` finds (every pair within the entry's limit, comparing all of them), compiled:
    ~15x as fast, for the research check's audit. No index, no buckets: nothing in common with `search`."""
    if not len(queries) or not len(entries):
        return set()
    with LAUNCH:
        found = _compare_all(
            np.ascontiguousarray(queries, np.uint64), np.ascontiguousarray(entries, np.uint64),
            np.asarray(limits, np.uint64),
        )  # fmt: skip
    return set(map(tuple, found.tolist()))


_HEX_DIGITS = np.full(256, 255, np.uint8)  # a byte's value as a hex digit, 255 for any other byte
for _digit, _char in enumerate("0123456789abcdef"):
    _HEX_DIGITS[ord(_char)] = _HEX_DIGITS[ord(_char.upper())] = _digit


@numba.njit(parallel=True, cache=True)
def _hex_words(data, offsets, digits):
    """Words of each string data[offsets[i]:offsets[i + 1]] that is 64 hex digits (either case), and which are:
    each byte is looked up in `digits` (255 where it is no hex digit), with no branch per byte."""
    n = offsets.shape[0] - 1
    words = np.zeros((n, 4), np.uint64)
    valid = np.zeros(n, np.bool_)
    for i in numba.prange(n):
        start = offsets[i]
        if offsets[i + 1] - start != 64:
            continue
        seen = np.uint8(0)  # every digit OR-ed: 15 or less when all 64 bytes are hex digits
        for w in range(4):
            value = np.uint64(0)
            for k in range(16):
                digit = digits[data[start + 16 * w + k]]
                seen |= digit
                value = (value << np.uint64(4)) | np.uint64(digit & np.uint8(15))
            words[i, w] = value
        if seen < 16:
            valid[i] = True
        else:
            words[i, 0] = words[i, 1] = words[i, 2] = words[i, 3] = 0
    return words, valid


def hex_words(strings) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) uint64 words of PDQ hashes written as 64 hex digits (the words of `pdq.to_words`), and a mask
    of the strings that are (null, another length or another character: False, their words zero)."""
    offsets, data, valid = string_buffers(strings, narrow=True)
    with LAUNCH:
        words, ok = _hex_words(data, offsets, _HEX_DIGITS)
    return words, valid & ok
