"""Types of ``meshctl install`` values: each checks one value and says what it accepts.

A type's :meth:`check` returns the normalized value or raises :class:`ValueProblem` with a message
that names what was expected; :mod:`.values` adds the key path and the source. ``describe()`` is
the text of the type column in the values reference (docs/deploy.md).
"""

from __future__ import annotations

import re
from typing import Any

from ..durations import parse_duration
from ..errors import ValueProblem




def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


class ValueType:
    """Base: accept anything (subclasses narrow it)."""

    def check(self, value: Any) -> Any:
        return value

    def describe(self) -> str:
        return "any"


class Str(ValueType):
    """A string matching ``pattern`` (when given); an unquoted number (``--set x=12``) becomes ``"12"``."""

    def __init__(self, pattern: str | None = None, hint: str = "", allow_empty: bool = True):
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.allow_empty = allow_empty

    def check(self, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueProblem(f"expected a string{self._hint()}, got {_kind(value)}")
        if value == "" and self.allow_empty:
            return value
        if value == "" or (self.pattern and not self.pattern.fullmatch(value)):
            raise ValueProblem(f"{value!r} is not valid{self._hint()}")
        return value

    def _hint(self) -> str:
        return f" ({self.hint})" if self.hint else ""

    def describe(self) -> str:
        return self.hint or "string"


class Bool(ValueType):
    def check(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        raise ValueProblem(f"expected true or false, got {_kind(value)} {value!r}")

    def describe(self) -> str:
        return "bool"


class Enum(ValueType):
    def __init__(self, *choices: str):
        self.choices = choices

    def check(self, value: Any) -> Any:
        if isinstance(value, str):
            for choice in self.choices:  # accept any case, keep the canonical spelling
                if value.lower() == choice.lower():
                    return choice
        raise ValueProblem(f"expected one of {', '.join(self.choices)}, got {value!r}")

    def describe(self) -> str:
        return " \\| ".join(self.choices)


class Number(ValueType):
    def __init__(self, minimum: float | None = None, maximum: float | None = None, integer: bool = False):
        self.minimum, self.maximum, self.integer = minimum, maximum, integer

    def check(self, value: Any) -> Any:
        ok_types = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            raise ValueProblem(f"expected {'an integer' if self.integer else 'a number'}, got {_kind(value)} {value!r}")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ValueProblem(f"{value} is out of range {self._range()}")
        return value

    def _range(self) -> str:
        return f"{self.minimum if self.minimum is not None else '-inf'}..{self.maximum if self.maximum is not None else 'inf'}"

    def describe(self) -> str:
        return ("int" if self.integer else "number") + (f" {self._range()}" if (self.minimum, self.maximum) != (None, None)
                                                        else "")


class Duration(ValueType):
    """``30s``, ``15m``, ``24h``, ``1h30m`` (a bare number is seconds); kept as the operator wrote it."""

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueProblem(f"expected a duration like 30s, 15m or 24h, got {_kind(value)}")
        try:
            if parse_duration(value).total_seconds() <= 0:
                raise ValueProblem(f"{value!r} must be longer than zero")
        except ValueError as exc:
            raise ValueProblem(str(exc)) from exc
        return str(value) if isinstance(value, str) else f"{value}s"

    def describe(self) -> str:
        return "duration (30s, 15m, 24h)"


_SIZE = re.compile(r"\d+[KMGT]?|infinity|\d{1,3}%")


class Size(ValueType):
    """A systemd memory size: ``512M``, ``2G``, bytes, ``NN%`` or ``infinity``."""

    def check(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _SIZE.fullmatch(value):
            return value
        raise ValueProblem(f"expected a systemd size like 512M, 2G, 80% or infinity, got {value!r}")

    def describe(self) -> str:
        return "size (512M, 2G, infinity)"


class Limit(ValueType):
    """A count for TasksMax/LimitNOFILE: a positive integer or ``infinity``."""

    def check(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if value == "infinity":
            return value
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
        raise ValueProblem(f"expected a positive integer or infinity, got {value!r}")

    def describe(self) -> str:
        return "int or infinity"


class ListOf(ValueType):
    """A list of ``item`` values; a single value is taken as a list of one."""

    def __init__(self, item: ValueType):
        self.item = item

    def check(self, value: Any) -> Any:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        out = []
        for i, v in enumerate(items):
            try:
                out.append(self.item.check(v))
            except ValueProblem as exc:
                raise ValueProblem(f"item {i}: {exc}") from exc
        return out

    def describe(self) -> str:
        return f"list of {self.item.describe()}"
