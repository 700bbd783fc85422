"""Perceptual (PDQ) near matching: which image hashes lie within a source's Hamming distance of a list entry.

Re-LAION matched exact MD5/SHA hashes only, which miss every resized or re-encoded copy. A PDQ hash has 256
bits, written as 64 hex digits in ThreatExchange's convention (the bit vector read as one big-endian number),
and two copies of one picture stay within a few dozen bits of each other; 31 is the usual match distance.

Matching is set-oriented in DuckDB with multi-index hashing, never by comparing every pair: the 256 bits are
16 slots of 16 bits, and two hashes within distance d differ in at least one slot by at most floor(d / 16) bits
(if every slot differed by more, the distance would exceed d). So each list entry is indexed by its 16
(slot, value) keys, each image hash probes its 16 slot values flipped by every mask of at most floor(d / 16)
bits (17 masks for d <= 31), and only pairs sharing a key have their full distance computed. The result is
exactly the brute-force answer (tests compare both on 20k x 20k hashes).
"""

from __future__ import annotations

import numpy as np

from relaion_pipeline.lists.kinds import PDQ

BITS = 256
SLOTS = 16
SLOT_BITS = BITS // SLOTS
DEFAULT_DISTANCE = 31  # ThreatExchange's default PDQ match distance
MAX_DISTANCE = 63  # probes grow as C(16, floor(d / 16)): 17 masks at 31, 137 at 47, 697 at 63
MIN_QUALITY = 50  # PDQ's own advice: hashes of lower quality (flat or tiny images) are not matched


def low_quality_sql(column: str = "pdq_quality") -> str:
    """SQL: true for a PDQ quality that says the hash is not worth matching (0 to 49). A quality outside
    0-100 is no quality PDQ gives: it is counted (`out_of_range_sql`) and the hash matched, as one of
    unknown quality is: a damaged column must never hide a listed image."""
    return f"({column} BETWEEN 0 AND {MIN_QUALITY - 1})"


def out_of_range_sql(column: str = "pdq_quality") -> str:
    return f"({column} NOT BETWEEN 0 AND 100)"


def words_sql(hex_column: str) -> str:
    """SQL: the four 64-bit words h0..h3 of a 64-hex-digit PDQ column."""
    return ", ".join(f"('0x' || substr({hex_column}, {1 + 16 * w}, 16))::UBIGINT AS h{w}" for w in range(4))


def _slot_sql(slot: str) -> str:
    """SQL: the 16-bit value of slot `slot` (0..15) of the words h0..h3."""
    word = f"(CASE {slot} // 4 WHEN 0 THEN h0 WHEN 1 THEN h1 WHEN 2 THEN h2 ELSE h3 END)"
    return f"(({word} >> (16 * (3 - {slot} % 4))::UBIGINT) & 65535::UBIGINT)::INTEGER"


DISTANCE_SQL = " + ".join(f"bit_count(xor(q.h{w}, e.h{w}))::INTEGER" for w in range(4))


def radius(max_distance: int) -> int:
    """Bits a probe flips in one slot so that every pair within `max_distance` shares a probed key."""
    return max_distance // SLOTS


def near_matches_sql(queries: str, entries: str, max_distance: int) -> str:
    """SQL: every (qid, eid, distance) with distance <= the entry's own `distance`.

    `queries` is a relation with `qid` and `pdq` (hex, named as the sidecar's column); `entries` one with `eid`,
    `pdq` (hex) and `distance` (at most `max_distance`, which sets how many bits a probe flips).
    """
    flips = radius(max_distance)
    return f"""
    WITH q AS (SELECT qid, {words_sql(PDQ.sidecar_column)} FROM ({queries})),
    e AS (SELECT eid, distance, {words_sql(PDQ.sidecar_column)} FROM ({entries})),
    masks AS (SELECT m::INTEGER AS m FROM range(65536) t(m) WHERE bit_count(m) <= {int(flips)}),
    e_keys AS (SELECT s * 65536 + {_slot_sql("s")} AS k, eid, distance, h0, h1, h2, h3 FROM e, range({SLOTS}) t(s)),
    q_slots AS (SELECT s, {_slot_sql("s")} AS v, qid, h0, h1, h2, h3 FROM q, range({SLOTS}) t(s)),
    q_keys AS (SELECT s * 65536 + xor(v, m) AS k, qid, h0, h1, h2, h3 FROM q_slots, masks),
    pairs AS (
        SELECT q.qid, e.eid, e.distance AS limit_, {DISTANCE_SQL} AS distance
        FROM q_keys q JOIN e_keys e ON e.k = q.k
    )
    SELECT DISTINCT qid, eid, distance FROM pairs WHERE distance <= limit_"""


# -- the same, by brute force, for tests and the research check's audit -------------------------------------


def to_words(hexes: list[str] | np.ndarray) -> np.ndarray:
    """(n, 4) uint64 words of PDQ hex strings (the same words as `words_sql`)."""
    raw = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=">u8") if len(hexes) else np.zeros(0, ">u8")
    return raw.astype(np.uint64).reshape(-1, 4)


def brute_force(queries: np.ndarray, entries: np.ndarray, distances: np.ndarray) -> set[tuple[int, int, int]]:
    """Every (query index, entry index, distance) within the entry's distance, by comparing every pair."""
    found = set()
    step = max(1, 4_000_000 // max(1, len(entries)))
    for start in range(0, len(queries), step):
        block = queries[start : start + step]
        d = np.zeros((len(block), len(entries)), dtype=np.int32)
        for w in range(4):
            d += np.bitwise_count(block[:, w, None] ^ entries[None, :, w])
        qi, ei = np.nonzero(d <= distances[None, :])
        found.update(zip((qi + start).tolist(), ei.tolist(), d[qi, ei].tolist(), strict=True))
    return found


def hex_of_bits(bits: np.ndarray) -> str:
    """ThreatExchange's hex form of a 256-element 0/1 vector (first element = most significant bit)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
