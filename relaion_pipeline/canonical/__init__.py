"""URL canonicalization (Safe Browsing v4) and lookup expressions: the Python reference (`urls`), the
compiled kernel (`canonical_kernel`) and the hashing kernel that writes lookup hashes (`lookup_hashes`).
The SQL tier lives with the queries that use it (`match.matching`); tests hold the three equal.
"""
