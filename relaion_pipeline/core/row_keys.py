"""Row keys as the pipeline writes them: never a way to read a removed row's URL.

A shard's row key column is whatever its maker put there; in some copies it holds the URL or text derived
from it. A removal is recorded by row number (in the input file its stats fingerprint) and a row key that
cannot disclose it:

- an integer key column (LAION's `SAMPLE_ID`, `hash`) is written as it is: a number cannot hold a URL;
- a shard without one has positional keys, `<shard>:<row number>`, written as they are;
- any other key column (text) is written as `hmac:` and the first 32 hex digits of the HMAC-SHA256 of the
  key under a key taken from the shard file's own bytes (`secret`: its last 64 KiB, compressed pages and the
  footer with its column statistics). Whoever holds the shard can find a row again (`Writer.one`), and the
  same shard gives the same written keys in any work location; whoever holds only a work file, a check's
  failure or an alert can neither read nor confirm a URL from it.
"""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa

from relaion_pipeline.core import storage
from relaion_pipeline.core.schemas import Roles

PREFIX = "hmac:"
DIGITS = 32


def disclosing(roles: Roles, schema: pa.Schema) -> bool:
    """Whether the shard's row keys could hold text of its URLs: a key column that is not an integer one."""
    return roles.key is not None and not pa.types.is_integer(schema.field(roles.key).type)


TAIL = 64 << 10


def secret(shard_path: str) -> bytes:
    """The HMAC key of a shard's row keys: the sha256 of the last 64 KiB of its file (what only a holder of
    the shard has), so that no key is stored anywhere."""
    fs, path = storage.filesystem(shard_path)
    size = fs.size(path)
    with fs.open(path, "rb") as handle:
        handle.seek(max(0, size - TAIL))
        return hashlib.sha256(b"relaion row keys\0" + handle.read()).digest()


def protect(key: str | None, key_secret: bytes) -> str | None:
    """The written form of one text row key."""
    if key is None:
        return None
    return PREFIX + hmac.new(key_secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:DIGITS]


class Writer:
    """Turns a shard's row keys into their written form (see the module docstring); `how` says which form,
    for the stats."""

    def __init__(self, shard_path: str, roles: Roles, schema: pa.Schema):
        self.hides = disclosing(roles, schema)
        self._secret = secret(shard_path) if self.hides else b""
        if self.hides:
            self.how = f"hmac-sha256 of column {roles.key!r} (text) keyed by the shard file, {DIGITS} hex digits"
        elif roles.key is not None:
            self.how = f"column {roles.key!r} as it is (integers)"
        else:
            self.how = "positional: <shard>:<row number>"

    def one(self, key) -> str | None:
        return protect(None if key is None else str(key), self._secret) if self.hides else key

    def many(self, keys) -> list:
        return [self.one(k) for k in keys]

    def column(self, table: pa.Table, name: str = "row_key") -> pa.Table:
        """`table` with its column `name` in written form."""
        if not self.hides or not table.num_rows:
            return table
        index = table.schema.get_field_index(name)
        written = pa.array(self.many(table.column(name).to_pylist()), pa.string())
        return table.set_column(index, table.schema.field(index), written)
