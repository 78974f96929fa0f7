"""RateLimit's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into a :class:`RateLimitSpec`; durations
become seconds, an omitted ``tokensPerFill`` is ``maxTokens``. The plugin and its filters read only these types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.kinds._fields import seconds
from meshcore.resources.model import Resource


@dataclass(frozen=True)
class LimitMatch:
    """Inside one match the fields combine with AND, the values of one field with OR (at least one field is set)."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # caller SPIFFE principals, without the scheme


@dataclass(frozen=True)
class Limit:
    name: str | None
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float  # seconds
    match: LimitMatch | None = None  # None: every request

    def id(self, index: int) -> str:
        """How the limit is named in Envoy's config: its ``name``, else ``limits[<index>]``."""
        return self.name or f"limits[{index}]"

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds until an empty bucket holds a token again (Envoy refills continuously), at least 1."""
        per_token = self.fill_interval / self.tokens_per_fill
        return max(1, math.ceil(per_token - 1e-9))


@dataclass(frozen=True)
class RateLimitSpec:
    match_labels: tuple[tuple[str, str], ...] = ()  # empty: every workload of the namespace (or of the mesh)
    limits: tuple[Limit, ...] = ()


def _limit(limit: Mapping[str, Any]) -> Limit:
    match = limit.get("match")
    return Limit(
        name=limit.get("name"),
        max_tokens=int(limit["maxTokens"]),
        tokens_per_fill=int(limit.get("tokensPerFill") or limit["maxTokens"]),
        fill_interval=seconds(limit["fillInterval"]),
        match=None if not match else LimitMatch(
            paths=tuple(match.get("paths") or ()),
            methods=tuple(match.get("methods") or ()),
            sources=tuple(match.get("sources") or ()),
        ),
    )


def parse(spec: Mapping[str, Any]) -> RateLimitSpec:
    """The typed spec of a RateLimit whose ``spec`` the schema accepted."""
    selector = spec.get("selector") or {}
    return RateLimitSpec(
        match_labels=tuple(sorted((selector.get("matchLabels") or {}).items())),
        limits=tuple(_limit(limit) for limit in spec.get("limits") or ()),
    )


def spec_of(resource: Resource) -> RateLimitSpec:
    """The typed spec of a RateLimit resource (parsed once, kept on the resource)."""
    typed: RateLimitSpec = resource.typed
    return typed


__all__ = ["RateLimitSpec", "Limit", "LimitMatch", "parse", "spec_of"]
