"""JSON <-> frozen dataclasses for the API contracts: one encoder and one checked decoder.

Field types are the JSON ones (``str``, ``int``, ``float``, ``bool``, ``dict`` or ``dict[str, X]``), lists or tuples of them, another
contract, or ``X | None``. A field with ``metadata={"omit_empty": True}`` is left out of the JSON when empty
(for keys the wire only carries when set), ``omit_none`` only when None. Decoding checks every field and says which one is wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from ..errors import BadRequest

T = TypeVar("T", bound="Wire")

_hints: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    if cls not in _hints:
        _hints[cls] = typing.get_type_hints(cls)
    return tuple((f, _hints[cls][f.name]) for f in dataclasses.fields(cls))


def encode(value: Any) -> Any:
    """The JSON value of a contract, a list/tuple of them, or a plain JSON value."""
    if isinstance(value, Wire):
        out = {}
        for f, _ in _fields(type(value)):
            v = getattr(value, f.name)
            if f.metadata.get("omit_empty") and not v or f.metadata.get("omit_none") and v is None:
                continue
            out[f.metadata.get("json", f.name)] = encode(v)
        return out
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def decode(tp: Any, value: Any, where: str) -> Any:
    """``value`` (decoded JSON) as type ``tp``; :class:`BadRequest` naming ``where`` when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return decode(option, value, where)
            except BadRequest as exc:
                problems.append(str(exc))
        raise BadRequest(problems[0] if problems else f"{where}: unexpected {_describe(value)}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise BadRequest(f"{where}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"{where}: expected an object, got {_describe(value)}")
        args = typing.get_args(tp)
        if len(args) == 2:  # dict[str, X]: every value checked as X
            return {k: decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Wire):
        return tp.from_json(value, where)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise BadRequest(f"{where}: expected {'an integer' if tp is int else _describe(tp())}, got {_describe(value)}")
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether decoded JSON (or YAML) ``value`` nests objects/lists more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class Wire:
    """Base of the API contracts (frozen dataclasses): ``to_json()`` and a checked ``from_json()``."""

    def to_json(self) -> dict:
        return encode(self)

    @classmethod
    def from_json(cls: type[T], data: Any, where: str = "") -> T:
        where = where or "body"
        if not isinstance(data, dict):
            raise BadRequest(f"{where}: expected an object, got {_describe(data)}")
        values = {}
        for f, tp in _fields(cls):
            key = f.metadata.get("json", f.name)
            if key in data:
                values[f.name] = decode(tp, data[key], f"{where}.{key}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadRequest(f"{where}: {key!r} is missing")
        return cls(**values)


def omit_empty(default: Any = "") -> Any:
    """A field the JSON carries only when it is set (``""``, ``()``, ``None`` and ``False`` are left out)."""
    return dataclasses.field(default=default, metadata={"omit_empty": True})


def omit_none(default: Any = None) -> Any:
    """A field the JSON carries only when it is not None (an empty list still goes out)."""
    return dataclasses.field(default=default, metadata={"omit_none": True})


__all__ = ["Wire", "decode", "deeper_than", "encode", "omit_empty", "omit_none"]
