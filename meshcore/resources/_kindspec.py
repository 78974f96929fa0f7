"""KindSpec: the description of one resource kind (kept apart from the registry so kinds can import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .schema import Context, Path, Schema

Validator = Callable[[Any, Path, Context], Any]
Parser = Callable[[Any], Any]


@dataclass(frozen=True)
class KindSpec:
    """What the loader needs to know about one kind.

    ``validate(spec, path, ctx)`` records every problem in ``ctx`` and returns the cleaned spec
    (or :data:`~meshcore.resources.schema.INVALID`). ``spec_required=False`` lets a document omit
    ``spec`` (it is then validated as ``{}``). ``parse(cleaned)`` turns a spec ``validate`` accepted into the
    kind's typed spec (frozen dataclasses); it never fails on such a spec (:attr:`Resource.typed` holds it).
    """

    api_version: str
    kind: str
    validate: Validator
    spec_required: bool = False
    summary: str = ""
    parse: Parser | None = None

    @classmethod
    def from_schema(cls, api_version: str, kind: str, schema: Schema, **kw: Any) -> "KindSpec":
        return cls(api_version=api_version, kind=kind, validate=schema.check, **kw)

    def check_spec(self, spec: Any, path: Path, ctx: Context) -> Any:
        if spec is None:
            spec = {}
        return self.validate(spec, path, ctx)
