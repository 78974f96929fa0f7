"""A small validation toolkit: declare a schema once, get every violation with an exact field path.

Why not jsonschema: its error paths and messages are not what an operator should read, and it
stops being pleasant once rules span fields. Here a schema is a tree of small objects; walking
data with :meth:`Schema.check` appends ``(path, message)`` pairs to an :class:`Issues` collector
and returns the cleaned value (or :data:`INVALID`), so *every* problem is reported in one go.

Path syntax (what :class:`Path` renders, and what error messages show):

* object fields are joined with dots: ``spec.selector.matchLabels``
* list items are indexed: ``spec.rules[0].to[0].operation.methods[2]``
* map entries are quoted keys in brackets: ``spec.portLevelMtls["8080"].mode``,
  ``metadata.labels["app.kubernetes.io/name"]`` (keys may contain dots, so they are always quoted)

Example (the product brief's AuthorizationPolicy, expressed with this toolkit)::

    OPERATION = Obj({"methods": ListOf(Str(min_len=1)), "paths": ListOf(Str(min_len=1))})
    RULE = Obj({"from": ListOf(Obj({"source": Obj({"principals": ListOf(Str(min_len=1))})})),
                "to": ListOf(Obj({"operation": OPERATION}))})
    SPEC = Obj({"selector": LabelSelector(), "rules": ListOf(RULE)})

Options on :class:`Context` adapt the walk to input formats: ``unwrap_blocks`` accepts HCL's
``block { ... }`` (parsed as a one-element list of mappings) where a mapping is expected.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from meshcore.errors import FieldError
from meshcore.naming import dns_label_problem

__all__ = [
    "INVALID",
    "Path",
    "Issues",
    "Context",
    "Schema",
    "Opaque",
    "Str",
    "Enum",
    "Int",
    "Port",
    "Bool",
    "ListOf",
    "MapOf",
    "StringMap",
    "StrKey",
    "PortKey",
    "LabelKey",
    "Field",
    "Required",
    "Obj",
    "LabelSelector",
    "DNSLabel",
    "Duration",
    "IPAddress",
    "Custom",
    "type_name",
    "suggest",
]


class _Invalid:
    """Sentinel returned by :meth:`Schema.check` when the value did not validate."""

    _instance: "_Invalid | None" = None

    def __new__(cls) -> "_Invalid":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Invalid()


# --- paths and issue collection ----------------------------------------------------------


class Path:
    """An immutable field path. ``Path().field("spec").field("rules").index(0)`` -> ``spec.rules[0]``."""

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[tuple[str, Any], ...] = ()):
        self._parts = parts

    def field(self, name: str) -> "Path":
        return Path(self._parts + (("f", str(name)),))

    def index(self, i: int) -> "Path":
        return Path(self._parts + (("i", int(i)),))

    def key(self, k: Any) -> "Path":
        return Path(self._parts + (("k", str(k)),))

    def __str__(self) -> str:
        out: list[str] = []
        for kind, value in self._parts:
            if kind == "f":
                out.append(("." if out else "") + value)
            elif kind == "i":
                out.append(f"[{value}]")
            else:
                out.append(f"[{json.dumps(value)}]")
        return "".join(out)

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Path) and other._parts == self._parts

    def __hash__(self) -> int:
        return hash(self._parts)


class Issues:
    """Collects ``(path, message)`` pairs; converts them to :class:`FieldError` for one source/document."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: Path | str, message: str) -> None:
        self.items.append((str(path), message))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def to_field_errors(self, source: str, document: int | None) -> list[FieldError]:
        return [FieldError(source, document, p, m) for p, m in self.items]


@dataclass
class Context:
    """What a walk needs besides the data: where issues go and format quirks to accept."""

    issues: Issues = field(default_factory=Issues)
    unwrap_blocks: bool = False
    notes: Issues = field(default_factory=Issues)  # accepted but read differently (a deprecated spelling)

    def add(self, path: Path, message: str) -> None:
        self.issues.add(path, message)

    def note(self, path: Path, message: str) -> None:
        self.notes.add(path, message)


# --- helpers -----------------------------------------------------------------------------


def type_name(value: Any) -> str:
    """Operator-facing name of a value's type (YAML/JSON vocabulary, not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


_NEGATED = re.compile(r"(not|Not|NOT)(?=[A-Z_])")


def _negated(word: str) -> bool:
    """``notPrincipals``, ``not_ports``, ``notValues``: a field that means the opposite of its stem."""
    return bool(_NEGATED.match(word))


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest known spelling of ``word`` (difflib), or None when nothing is close.

    Never a field of opposite meaning: ``requestPrincipals`` is not a misspelling of ``notPrincipals`` (nor
    ``remoteIpBlocks`` of ``notIpBlocks``), so a negated choice is only offered for a negated word and back.
    """
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    same_sense = [c for c in choices if _negated(c) == _negated(word)]
    close = difflib.get_close_matches(word, same_sense, n=1, cutoff=0.7)
    return close[0] if close else None


def _unwrap_block(value: Any, path: Path, ctx: Context) -> Any:
    """HCL ``name { ... }`` parses as ``[{...}]``; accept it where one mapping is expected."""
    if ctx.unwrap_blocks and isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        if len(value) == 1:
            return value[0]
        ctx.add(path, f"must be a single block, found {len(value)} blocks")
        return INVALID
    return value


# --- schemas -----------------------------------------------------------------------------


class Schema:
    """Base class. ``check`` validates ``value`` at ``path``, records issues, returns the cleaned value."""

    expected = "a value"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wrong_type(self, value: Any, path: Path, ctx: Context) -> Any:
        ctx.add(path, f"must be {self.expected}, got {type_name(value)}")
        return INVALID


class Opaque(Schema):
    """Any JSON value, passed through unvalidated (e.g. Consul's ``proxy.config``). ``mapping=True`` requires a mapping."""

    def __init__(self, mapping: bool = False):
        self.mapping = mapping
        self.expected = "a mapping" if mapping else "a value"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if self.mapping:
            value = _unwrap_block(value, path, ctx)
            if value is INVALID:
                return INVALID
            if not isinstance(value, Mapping):
                return self._wrong_type(value, path, ctx)
            return dict(value)
        return value


class Str(Schema):
    """A string, optionally with length bounds and a regex (``pattern_hint`` explains the regex in words)."""

    expected = "a string"

    def __init__(
        self,
        min_len: int = 0,
        max_len: int | None = None,
        pattern: str | None = None,
        pattern_hint: str | None = None,
    ):
        self.min_len = min_len
        self.max_len = max_len
        self.pattern = re.compile(pattern) if pattern else None
        self.pattern_hint = pattern_hint or (f"must match {pattern}" if pattern else "")

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ctx.add(path, f"must be a string, got {type_name(value)} (quote it: \"{value}\")")
                return INVALID
            return self._wrong_type(value, path, ctx)
        if len(value) < self.min_len:
            ctx.add(path, "must not be empty" if self.min_len == 1 else f"must be at least {self.min_len} characters")
            return INVALID
        if self.max_len is not None and len(value) > self.max_len:
            ctx.add(path, f"must be at most {self.max_len} characters (got {len(value)})")
            return INVALID
        if self.pattern is not None and not self.pattern.fullmatch(value):
            ctx.add(path, f"{self.pattern_hint} (got {json.dumps(value)})")
            return INVALID
        return value


class Enum(Schema):
    """One of a fixed set of strings; suggests the intended value on a near miss (``strict`` -> ``STRICT``)."""

    def __init__(self, *values: str, any_case: bool = False):
        self.values = tuple(values)
        self.any_case = any_case  # Istio's port protocols: "http" is "HTTP" (the canonical spelling is kept)
        self.expected = "one of " + ", ".join(json.dumps(v) for v in values)

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if value in self.values:
            return value
        if self.any_case:
            for v in self.values:
                if v.upper() == value.upper():
                    return v
        msg = f"must be {self.expected}, got {json.dumps(value)}"
        hint = suggest(value.upper() if self.any_case else value, [v for v in self.values if v])
        if hint:
            msg += f"; did you mean {json.dumps(hint)}?"
        ctx.add(path, msg)
        return INVALID


class Int(Schema):
    """An integer (booleans and fractional numbers are rejected), optionally bounded."""

    def __init__(self, min: int | None = None, max: int | None = None, message: str | None = None):
        self.min = min
        self.max = max
        if message:
            self.message = message
        elif min is not None and max is not None:
            self.message = f"must be an integer {min}-{max}"
        elif min is not None:
            self.message = f"must be an integer >= {min}"
        elif max is not None:
            self.message = f"must be an integer <= {max}"
        else:
            self.message = "must be an integer"
        self.expected = self.message.removeprefix("must be ")

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.add(path, f"{self.message} (got {type_name(value)} {json.dumps(value, default=str)})")
            return INVALID
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            ctx.add(path, f"{self.message} (got {value})")
            return INVALID
        return value


class Port(Int):
    """A TCP port number, 1-65535."""

    def __init__(self) -> None:
        super().__init__(1, 65535)


class Bool(Schema):
    expected = "true or false"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, bool):
            return self._wrong_type(value, path, ctx)
        return value


class ListOf(Schema):
    """A list whose every item matches ``item``; each bad item is reported at ``path[i]``."""

    expected = "a list"

    def __init__(self, item: Schema, min_items: int = 0, max_items: int | None = None, unique: bool = False):
        self.item = item
        self.min_items = min_items
        self.max_items = max_items
        self.unique = unique

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, (list, tuple)):
            return self._wrong_type(value, path, ctx)
        if len(value) < self.min_items:
            ctx.add(path, "must not be empty" if self.min_items == 1 else f"must have at least {self.min_items} items")
        if self.max_items is not None and len(value) > self.max_items:
            ctx.add(path, f"must have at most {self.max_items} items (got {len(value)})")
        out: list[Any] = []
        ok = True
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            cleaned = self.item.check(item, path.index(i), ctx)
            if cleaned is INVALID:
                ok = False
                continue
            if self.unique:
                marker = json.dumps(cleaned, sort_keys=True, default=str)
                if marker in seen:
                    ctx.add(path.index(i), f"duplicate of item [{seen[marker]}]")
                    ok = False
                    continue
                seen[marker] = i
            out.append(cleaned)
        return out if ok else INVALID


class StrKey:
    """Validates a map key that must be a string; returns the normalized key (or INVALID)."""

    def __init__(self, value: Schema | None = None):
        self.value = value

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(key, str):
            ctx.add(path, f"keys must be strings, got {type_name(key)} (quote the key)")
            return INVALID
        if self.value is not None:
            return self.value.check(key, path, ctx)
        return key


class PortKey(StrKey):
    """A map key naming a port: ``8080`` or ``"8080"``; normalized to the string ``"8080"``."""

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        if isinstance(key, str) and key.isdigit():
            n = int(key)
        elif isinstance(key, int) and not isinstance(key, bool):
            n = key
        else:
            ctx.add(path, f"key must be a port number 1-65535, got {json.dumps(key, default=str)}")
            return INVALID
        if not 1 <= n <= 65535:
            ctx.add(path, f"key must be a port number 1-65535, got {n}")
            return INVALID
        return str(n)


_LABEL_KEY = re.compile(r"[^\s\"'=,{}]+")


class LabelKey(StrKey):
    """A label key: non-empty, at most 253 characters, no whitespace, quotes, ``=``, ``,`` or braces.

    Looser than Kubernetes on purpose: meshcore workload labels include ``tag:<t>`` keys
    derived from Consul tags.
    """

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        key = super().check(key, path, ctx)
        if key is INVALID:
            return INVALID
        if not key or len(key) > 253 or not _LABEL_KEY.fullmatch(key):
            ctx.add(path, "label keys must be 1-253 characters without whitespace, quotes, '=', ',' or braces")
            return INVALID
        return key


class MapOf(Schema):
    """A mapping from keys (validated by ``key``) to values matching ``value``; entries report at ``path["k"]``."""

    expected = "a mapping"

    def __init__(self, value: Schema, key: StrKey | None = None, min_items: int = 0, max_items: int | None = None):
        self.value = value
        self.key = key or StrKey()
        self.min_items = min_items
        self.max_items = max_items

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        value = _unwrap_block(value, path, ctx)
        if value is INVALID:
            return INVALID
        if not isinstance(value, Mapping):
            return self._wrong_type(value, path, ctx)
        if len(value) < self.min_items:
            ctx.add(path, "must not be empty" if self.min_items == 1 else f"must have at least {self.min_items} entries")
        if self.max_items is not None and len(value) > self.max_items:
            ctx.add(path, f"must have at most {self.max_items} entries (got {len(value)})")
        out: dict[str, Any] = {}
        ok = True
        for raw_key, item in value.items():
            item_path = path.key(raw_key)
            key = self.key.check(raw_key, item_path, ctx)
            cleaned = self.value.check(item, item_path, ctx)
            if key is INVALID or cleaned is INVALID:
                ok = False
                continue
            if key in out:
                ctx.add(item_path, f"duplicate key (same as {json.dumps(key)})")
                ok = False
                continue
            out[key] = cleaned
        return out if ok else INVALID


def StringMap(key: StrKey | None = None, value: Schema | None = None, max_items: int | None = None) -> MapOf:
    """A string-to-string map (labels, meta)."""
    return MapOf(value or Str(), key=key or StrKey(), max_items=max_items)


@dataclass(frozen=True)
class Field:
    """One field of an :class:`Obj`: its schema, whether it is required, and an optional default."""

    schema: Schema
    required: bool = False
    default: Any = INVALID


@dataclass(frozen=True)
class Deprecated:
    """A field spelling Istio still accepts but has deprecated: read as the field ``into`` (its value through
    ``convert``), plus ``also`` (fields set with it unless the document sets them), with a note naming the
    current spelling. Giving both spellings is an error."""

    into: str
    convert: Callable[[Any], Any] | None = None
    also: Mapping[str, Any] = field(default_factory=dict)
    why: str = "deprecated in Istio"


def Required(schema: Schema) -> Field:
    return Field(schema, required=True)


def _loose(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


class Obj(Schema):
    """A mapping with known fields.

    * unknown fields are errors with a spelling suggestion (``allow_unknown`` drops them silently
      instead, e.g. for a Consul agent config file where only some keys concern us);
    * ``null`` counts as absent (as in Kubernetes), so ``spec:`` with nothing after it is fine;
    * ``loose_keys`` matches keys ignoring case and underscores (Consul accepts ``Name``,
      ``DestinationName`` and ``destination_name`` alike); the output uses the declared names;
    * ``rules`` are cross-field checks ``rule(cleaned: dict, path, ctx)`` run after the fields;
    * ``refused`` names fields Istio has and meshcore refuses, each with the reason and what to use instead
      (the error says so rather than "unknown field");
    * ``deprecated`` names Istio's deprecated spellings of fields, read as the current ones with a note
      (:class:`Deprecated`).
    """

    expected = "a mapping"

    def __init__(
        self,
        fields: Mapping[str, Schema | Field],
        *,
        rules: Sequence[Callable[[dict, Path, Context], None]] = (),
        allow_unknown: bool = False,
        loose_keys: bool = False,
        refused: Mapping[str, str] | None = None,
        deprecated: Mapping[str, Deprecated] | None = None,
    ):
        self.fields: dict[str, Field] = {
            name: f if isinstance(f, Field) else Field(f) for name, f in fields.items()
        }
        self.rules = tuple(rules)
        self.allow_unknown = allow_unknown
        self.loose_keys = loose_keys
        self.refused: dict[str, str] = dict(refused or {})
        self.deprecated: dict[str, Deprecated] = dict(deprecated or {})
        self._loose_index = {_loose(n): n for n in self.fields}

    def _resolve(self, key: str) -> str | None:
        if key in self.fields:
            return key
        if self.loose_keys:
            return self._loose_index.get(_loose(key))
        return None

    def _current_spelling(self, value: Mapping, path: Path, ctx: Context) -> tuple[dict, bool]:
        """``value`` with its deprecated spellings replaced by the current ones (see :class:`Deprecated`)."""
        out: dict[Any, Any] = {k: v for k, v in value.items() if k not in self.deprecated}
        ok = True
        for key, dep in self.deprecated.items():
            if key not in value or value[key] is None:
                continue
            if value.get(dep.into) is not None:
                ctx.add(path.field(key), f"{json.dumps(key)} is the deprecated spelling of {json.dumps(dep.into)}, "
                                         "which is also set: give one")
                ok = False
                continue
            try:
                out[dep.into] = dep.convert(value[key]) if dep.convert is not None else value[key]
            except (TypeError, ValueError) as exc:
                ctx.add(path.field(key), f"cannot be read as {json.dumps(dep.into)}: {exc}")
                ok = False
                continue
            for name, default in dep.also.items():
                out.setdefault(name, default)
            also = "".join(f", {n}: {json.dumps(v)}" for n, v in dep.also.items() if value.get(n) is None)
            ctx.note(path.field(key), f"{dep.why}: read as {dep.into}: {json.dumps(out[dep.into])}{also}")
        return out, ok

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        value = _unwrap_block(value, path, ctx)
        if value is INVALID:
            return INVALID
        if not isinstance(value, Mapping):
            return self._wrong_type(value, path, ctx)
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}
        ok = True
        if self.deprecated and any(k in self.deprecated for k in value):
            value, ok = self._current_spelling(value, path, ctx)
        for key, item in value.items():
            if not isinstance(key, str):
                ctx.add(path.key(key), f"field names must be strings, got {type_name(key)}")
                ok = False
                continue
            name = self._resolve(key)
            if name is None and key in self.refused:
                ctx.add(path.field(key), f"{json.dumps(key)} is not supported: {self.refused[key]}")
                ok = False
                continue
            if name is None:
                if not self.allow_unknown:
                    msg = f"unknown field {json.dumps(key)}"
                    hint = suggest(key, self.fields)
                    if hint:
                        msg += f"; did you mean {json.dumps(hint)}?"
                    else:
                        msg += "; known fields: " + ", ".join(sorted(self.fields))
                    ctx.add(path.field(key), msg)
                    ok = False
                continue
            if name in seen:
                ctx.add(path.field(key), f"field given twice (also as {json.dumps(seen[name])})")
                ok = False
                continue
            seen[name] = key
            if item is None:
                continue
            cleaned = self.fields[name].schema.check(item, path.field(key), ctx)
            if cleaned is INVALID:
                ok = False
            else:
                out[name] = cleaned
        for name, f in self.fields.items():
            if name in out or name in seen and value.get(seen[name]) is not None:
                continue
            if f.required:
                ctx.add(path.field(name), "required field is missing")
                ok = False
            elif f.default is not INVALID:
                out[name] = f.default
        if ok:
            before = len(ctx.issues)
            for rule in self.rules:
                rule(out, path, ctx)
            ok = len(ctx.issues) == before
        return out if ok else INVALID


def LabelSelector() -> Obj:
    """Istio's workload selector: ``{matchLabels: {key: value}}``."""
    return Obj({"matchLabels": StringMap(key=LabelKey(), value=Str(max_len=63))})


class DNSLabel(Str):
    """An RFC 1123 label (Kubernetes names): the message says which rule failed."""

    def __init__(self, max_len: int = 63):
        super().__init__()
        self.max_len = max_len

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        value = super().check(value, path, ctx)
        if value is INVALID:
            return INVALID
        problem = dns1123_problem(value, 63 if self.max_len is None else self.max_len)
        if problem:
            ctx.add(path, f"{json.dumps(value)} is not a valid name: {problem}")
            return INVALID
        return value


def dns1123_problem(value: str, max_len: int = 63) -> str | None:
    """Which DNS-1123 label rule ``value`` breaks, or None when it is a valid label (the rule: :mod:`meshcore.naming`)."""
    return dns_label_problem(value, max_len)


_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


class Duration(Str):
    """A Go-style duration as Consul and Istio write them: ``10s``, ``1m30s``, ``250ms``."""

    def __init__(self) -> None:
        super().__init__(pattern=_DURATION.pattern, pattern_hint='must be a duration such as "10s", "1m30s" or "250ms"')


class IPAddress(Str):
    """An IPv4 or IPv6 address literal."""

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        value = super().check(value, path, ctx)
        if value is INVALID:
            return INVALID
        try:
            ipaddress.ip_address(value)
        except ValueError:
            ctx.add(path, f"must be an IP address, got {json.dumps(value)}")
            return INVALID
        return value


class Custom(Schema):
    """Wrap a schema with an extra check ``fn(cleaned) -> error message | None``."""

    def __init__(self, inner: Schema, fn: Callable[[Any], str | None]):
        self.inner = inner
        self.fn = fn
        self.expected = inner.expected

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        cleaned = self.inner.check(value, path, ctx)
        if cleaned is INVALID:
            return INVALID
        problem = self.fn(cleaned)
        if problem:
            ctx.add(path, problem)
            return INVALID
        return cleaned
