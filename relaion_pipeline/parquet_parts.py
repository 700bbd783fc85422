"""One parquet file from row groups encoded apart (in parallel), byte for byte what one writer would write.

pyarrow's `ParquetWriter` encodes one row group after another on one core, and each row group's column
chunks depend only on its own rows. So each row group can be encoded on its own core into a small parquet
file of its own (a "part"). The output is then the parts' column-chunk bytes one after another, and a footer
that lists every part's row groups. The offsets in that footer are moved to where each part's bytes now lie,
and the row counts and ordinals are renumbered.

The footer is Thrift's compact protocol (parquet.thrift's FileMetaData). It is decoded into a generic tree
and re-encoded the same way, so fields this module does not know are kept exactly as they were.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

MAGIC = b"PAR1"

# compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT, _UUID = range(1, 14)

# parquet.thrift field ids that hold absolute file offsets, and the counts that are renumbered
_FILE_ROWS, _FILE_ROW_GROUPS = 3, 4  # FileMetaData.num_rows, .row_groups
_GROUP_COLUMNS, _GROUP_FILE_OFFSET, _GROUP_ORDINAL = 1, 5, 7  # RowGroup.columns, .file_offset, .ordinal
_CHUNK_OFFSETS = (2, 4, 6)  # ColumnChunk.file_offset, .offset_index_offset, .column_index_offset
_CHUNK_META = 3  # ColumnChunk.meta_data
_META_OFFSETS = (9, 10, 11, 14)  # ColumnMetaData: data, index, dictionary page offsets, bloom filter offset


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int):
        if kind in (_TRUE, _FALSE):  # a bool inside a list: one byte
            return self.byte()
        if kind == _BYTE:
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            self.at += 8
            return self.data[self.at - 8 : self.at]
        if kind == _BINARY:
            n = self.varint()
            self.at += n
            return self.data[self.at - n : self.at]
        if kind == _UUID:
            self.at += 16
            return self.data[self.at - 16 : self.at]
        if kind in (_LIST, _SET):
            header = self.byte()
            size, element = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            return (element, [self.value(element) for _ in range(size)])
        if kind == _MAP:
            size = self.varint()
            types = self.byte() if size else 0
            pairs = [(self.value(types >> 4), self.value(types & 0x0F)) for _ in range(size)]
            return (types, pairs)
        if kind == _STRUCT:
            return self.struct()
        raise ValueError(f"parquet footer: unknown Thrift compact type {kind} at byte {self.at}")

    def struct(self) -> list[list]:
        """[field id, type, value] per field, in order; a bool field's value is its type (true or false)."""
        fields, last = [], 0
        while True:
            header = self.byte()
            if header == 0:
                return fields
            delta, kind = header >> 4, header & 0x0F
            field = last + delta if delta else self.zigzag()
            value = kind == _TRUE if kind in (_TRUE, _FALSE) else self.value(kind)
            fields.append([field, kind, value])
            last = field


class _Writer:
    def __init__(self):
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n > 0x7F:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def zigzag(self, n: int) -> None:
        self.varint((n << 1) ^ (n >> 63))

    def value(self, kind: int, value) -> None:
        if kind in (_TRUE, _FALSE, _BYTE):
            self.out.append(value)
        elif kind in (_I16, _I32, _I64):
            self.zigzag(value)
        elif kind in (_DOUBLE, _UUID):
            self.out += value
        elif kind == _BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (_LIST, _SET):
            element, items = value
            if len(items) < 15:
                self.out.append(len(items) << 4 | element)
            else:
                self.out.append(0xF0 | element)
                self.varint(len(items))
            for item in items:
                self.value(element, item)
        elif kind == _MAP:
            types, pairs = value
            self.varint(len(pairs))
            if pairs:
                self.out.append(types)
            for k, v in pairs:
                self.value(types >> 4, k)
                self.value(types & 0x0F, v)
        elif kind == _STRUCT:
            self.struct(value)
        else:
            raise ValueError(f"parquet footer: unknown Thrift compact type {kind}")

    def struct(self, fields: list[list]) -> None:
        last = 0
        for field, kind, value in fields:
            if kind in (_TRUE, _FALSE):
                kind = _TRUE if value else _FALSE
            delta = field - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | kind)
            else:
                self.out.append(kind)
                self.zigzag(field)
            if kind not in (_TRUE, _FALSE):
                self.value(kind, value)
            last = field
        self.out.append(0)


def _field(fields: list[list], field_id: int) -> list | None:
    return next((f for f in fields if f[0] == field_id), None)


def _shift(fields: list[list], ids: Iterable[int], delta: int) -> None:
    """Move the offsets `ids` by `delta`; 0 is no offset (pyarrow writes the deprecated ColumnChunk.file_offset
    as 0), as byte 0 of a file is its magic, never data."""
    for f in fields:
        if f[0] in ids and f[2] > 0:
            f[2] += delta


def footer(part: bytes) -> tuple[list[list], int]:
    """The decoded FileMetaData of a whole parquet file held in memory, and where its footer starts."""
    if part[:4] != MAGIC or part[-4:] != MAGIC:
        raise ValueError("not a parquet file: no PAR1 at its start and end")
    length = struct.unpack("<I", part[-8:-4])[0]
    start = len(part) - 8 - length
    return _Reader(part[start : len(part) - 8]).struct(), start


def write(parts: Iterable[bytes], sink: BinaryIO) -> None:
    """Write to `sink` the parquet file made of the row groups of `parts` (whole files, each written by pyarrow
    with the same schema and options), in order; one part at a time is held."""
    sink.write(MAGIC)
    position = len(MAGIC)
    metadata, groups, rows = None, [], 0
    for part in parts:
        fields, data_end = footer(part)
        delta = position - len(MAGIC)
        sink.write(memoryview(part)[len(MAGIC) : data_end])
        position += data_end - len(MAGIC)
        rows += _field(fields, _FILE_ROWS)[2]
        for group in _field(fields, _FILE_ROW_GROUPS)[2][1] if _field(fields, _FILE_ROW_GROUPS) else []:
            _shift(group, (_GROUP_FILE_OFFSET,), delta)
            for chunk in _field(group, _GROUP_COLUMNS)[2][1]:
                _shift(chunk, _CHUNK_OFFSETS, delta)
                meta = _field(chunk, _CHUNK_META)
                if meta is not None:
                    _shift(meta[2], _META_OFFSETS, delta)
            ordinal = _field(group, _GROUP_ORDINAL)
            if ordinal is not None:
                ordinal[2] = len(groups)
            groups.append(group)
        metadata = metadata or fields
    if metadata is None:
        raise ValueError("no parts to write")
    _field(metadata, _FILE_ROWS)[2] = rows
    listed = _field(metadata, _FILE_ROW_GROUPS)
    if listed is None:  # the first part had no row group (an empty table): the field goes after num_rows
        listed = [_FILE_ROW_GROUPS, _LIST, (_STRUCT, [])]
        metadata.insert(metadata.index(_field(metadata, _FILE_ROWS)) + 1, listed)
    listed[2] = (_STRUCT, groups)
    writer = _Writer()
    writer.struct(metadata)
    sink.write(bytes(writer.out))
    sink.write(struct.pack("<I", len(writer.out)))
    sink.write(MAGIC)
