"""Typed records on disk: a frozen dataclass written as JSON with its name and schema version, and read back
only when it is that record, of that version, with every field there and of its declared type.

A record that was edited, cut short, or written by another version of the pipeline is an error naming the
file and the field (`RecordError`), never a dict that a reader half understands: the status of a shard rests
on these records, and a guess would publish on doubt.

Declaring one (the stage records are in `stages.records`)::

    @dataclass(frozen=True)
    class Counted(Record):
        NAME: ClassVar[str] = "counted"
        VERSION: ClassVar[int] = 1  # raise it when a field changes meaning; older files are then refused

        rows: int
        note: str | None = None

Field types may be `int`, `float` (an int is taken), `str`, `bool`, `None` unions, `Literal[...]`,
`list[...]`, `tuple[..., ...]`, `dict[str, ...]`, bare `dict` (any JSON object, e.g. a file fingerprint) and
other records or dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, ClassVar, Literal, Self

from relaion_pipeline.core import storage


class RecordError(ValueError):
    """A record file that is not the record it should be: the message names the file and the field."""


class Record:
    """Base of the records kept on disk (a frozen dataclass subclass declares NAME, VERSION and its fields)."""

    NAME: ClassVar[str]
    VERSION: ClassVar[int]

    def as_dict(self) -> dict:
        """The fields as plain JSON values (nested records as dicts)."""
        return dataclasses.asdict(self)

    def write(self, path: str) -> None:
        """Write the record atomically, its name and version first; one that would not read back (a field of
        the wrong type) is refused before anything is written."""
        payload = {"record": self.NAME, "version": self.VERSION, **self.as_dict()}
        type(self).from_dict(payload, f"{path} (being written)")
        storage.write_json_atomic(payload, path)

    @classmethod
    def read(cls, path: str) -> Self:
        """The record in `path`; RecordError when it is not this record, of this version, well formed."""
        try:
            data = storage.read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"{path}: not a JSON {cls.NAME} record ({error})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Self:
        """The record from its JSON form (with "record" and "version"); `where` names it in errors."""
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object ({cls.NAME} record), found {_kind(data)}")
        name, version = data.get("record"), data.get("version")
        if name is None and version is None:
            raise RecordError(
                f"{where}: no record name or version: written by a pipeline before its records had them,"
                f" this one reads {cls.NAME} records of version {cls.VERSION}"
            )
        if name != cls.NAME:
            raise RecordError(
                f"{where}: expected a {cls.NAME} record, found {'no record name' if name is None else repr(name)}"
            )
        if version != cls.VERSION:
            found = "no version (written before records had one)" if version is None else f"version {version!r}"
            raise RecordError(f"{where}: {cls.NAME} record of {found}, this pipeline reads version {cls.VERSION}")
        fields = {k: v for k, v in data.items() if k not in ("record", "version")}
        return _build(cls, fields, where, "")


@functools.cache
def _hints(cls: type) -> dict:
    """The declared field types of `cls` (its string annotations evaluated once per process)."""
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict, where: str, prefix: str):
    hints = _hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(declared))
    if unknown:
        raise RecordError(f"{where}: unexpected field {prefix + unknown[0]!r} in a {_name(cls)} record")
    values = {}
    for name, field in declared.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where}: field {prefix + name!r} is missing")
            continue
        values[name] = _load(data[name], hints[name], where, prefix + name)
    return cls(**values)


def _load(value: Any, hint: Any, where: str, field: str):
    """`value` as the type `hint`, or RecordError naming the field and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _load(value, arg, where, field)
            except RecordError:
                continue
        raise _wrong(where, field, hint, value)
    if origin is Literal:
        if value in args:
            return value
        raise _wrong(where, field, hint, value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _wrong(where, field, hint, value)
        return _build(hint, value, where, field + ".")
    if hint is Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            if not args:
                return value
            return {_key(k, where, field): _load(v, args[1], where, f"{field}[{k!r}]") for k, v in value.items()}
    elif origin in (list, tuple):
        if isinstance(value, list):
            item = args[0] if args else Any
            loaded = [_load(v, item, where, f"{field}[{i}]") for i, v in enumerate(value)]
            return loaded if origin is list else tuple(loaded)
    else:
        raise TypeError(f"records cannot hold {hint!r} (field {field!r})")
    raise _wrong(where, field, hint, value)


def _key(key: Any, where: str, field: str) -> str:
    if not isinstance(key, str):  # JSON keys always are; a record built in memory is checked the same
        raise RecordError(f"{where}: field {field!r} must have text keys, found {_kind(key)}")
    return key


def _wrong(where: str, field: str, hint: Any, value: Any) -> RecordError:
    return RecordError(f"{where}: field {field!r} must be {_describe(hint)}, found {_kind(value)}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if dataclasses.is_dataclass(hint):
        return f"an object ({_name(hint)})"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        dict: "an object",
        list: "a list",
        tuple: "a list",
        type(None): "null",
    }.get(origin or hint, str(hint))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"text of {len(value)} characters"  # never the text itself: a record could hold anything
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _name(cls: type) -> str:
    return getattr(cls, "NAME", cls.__name__)
