"""Field types shared by several kinds' schemas: service hosts, bounded numbers, durations, header names,
and the "exactly one" / "at least one" object rules."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from meshcore.durations import parse_duration
from meshcore.errors import FieldError
from meshcore.resources.schema import INVALID, Context, Path, Schema, Str, type_name

UINT32_MAX = 2**32 - 1

ROOT_NAMESPACE = "meshcore-system"
"""Policies without a selector in this namespace apply to the whole mesh (PeerAuthentication, AuthorizationPolicy,
RateLimit)."""

EXPORT_TO = ("Kubernetes namespace visibility: meshcore has no per-namespace config scoping, every VirtualService "
             "and DestinationRule applies to every proxy that calls its host; leave exportTo out")
"""Why ``exportTo`` is refused (VirtualService, DestinationRule)."""

TARGET_REF = ("a Kubernetes Gateway API reference: meshcore has no Gateway API objects; select workloads with "
              "selector.matchLabels")
"""Why ``targetRef``/``targetRefs`` are refused (AuthorizationPolicy, PeerAuthentication)."""

_SERVICE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?")
_EXTERNAL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
_KUBERNETES = re.compile(r"\.(svc|svc\.cluster\.local|cluster\.local)$")
_KUBERNETES_SERVICE = re.compile(r"(?P<service>[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)\.(?P<namespace>[a-z0-9]"
                                 r"([a-z0-9-]*[a-z0-9])?)\.svc(\.cluster\.local)?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


class ServiceHost(Schema):
    """A host as meshcore names it: a Consul service name (``reviews``), never a DNS name or a wildcard.

    Istio's Kubernetes spelling of a service (``reviews.default.svc.cluster.local``, ``reviews.default.svc``) is read
    as the service's name, with a note (the namespace part is dropped: a Consul service name is the mesh's)."""

    expected = "a service name"

    def __init__(self, external: bool = False):
        self.external = external  # also a ServiceEntry's DNS name (checked across resources, see service_entry)

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if _SERVICE.fullmatch(value):
            return value
        k8s = _KUBERNETES_SERVICE.fullmatch(value)
        if k8s:
            ctx.note(path, f"{json.dumps(value)} is a Kubernetes service name: read as the Consul service "
                           f"{json.dumps(k8s['service'])} (meshcore's hosts are Consul service names)")
            return k8s["service"]
        if self.external and _EXTERNAL.fullmatch(value) and not _KUBERNETES.search(value):
            return value
        if "." in value and _SERVICE.fullmatch(value.split(".", 1)[0]):
            ctx.add(path, f"{json.dumps(value)}: hosts are Consul service names in meshcore; "
                          f"write {json.dumps(value.split('.', 1)[0])}")
        elif "*" in value:
            ctx.add(path, f"{json.dumps(value)}: wildcard hosts are not supported; name one service")
        else:
            ctx.add(path, f"{json.dumps(value)} is not a service name (letters, digits, '-' and '_')")
        return INVALID


class Number(Schema):
    """A number (integer or fraction) within bounds, e.g. a percentage."""

    def __init__(self, min: float, max: float):
        self.min, self.max = min, max
        self.expected = f"a number {min:g}-{max:g}"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.add(path, f"must be {self.expected}, got {type_name(value)} {json.dumps(value, default=str)}")
            return INVALID
        if not self.min <= value <= self.max:
            ctx.add(path, f"must be {self.expected}, got {value:g}")
            return INVALID
        return value


class Dur(Schema):
    """A duration with a unit (``250ms``, ``2s``, ``1m30s``), checked with :func:`meshcore.durations.parse_duration`.

    ``min_s`` is the smallest accepted value in seconds (Envoy refuses zero for some fields).
    The cleaned value keeps the operator's spelling; :func:`seconds` converts it.
    """

    expected = "a duration"

    def __init__(self, min_s: float = 0.0):
        self.min_s = min_s

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            hint = f' (write "{value}s")' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            ctx.add(path, f"must be a duration such as \"500ms\", \"2s\" or \"1m30s\", got {type_name(value)}{hint}")
            return INVALID
        try:
            if re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
                raise ValueError(f"{value!r} has no unit; write it like 500ms, 2s or 1m30s")
            secs = parse_duration(value).total_seconds()
        except ValueError as exc:
            ctx.add(path, str(exc))
            return INVALID
        if secs < self.min_s:
            ctx.add(path, f"must be at least {self.min_s * 1000:g}ms, got {json.dumps(value)}")
            return INVALID
        return value


def seconds(duration: str) -> float:
    """Seconds in a duration the schema accepted."""
    return parse_duration(duration).total_seconds()


class HeaderName(Str):
    """An HTTP header name, lowercase (HTTP/2 and Envoy spell them so; Istio requires it too)."""

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        value = super().check(value, path, ctx)
        if value is INVALID:
            return INVALID
        if value != value.lower() and _HEADER_NAME.fullmatch(value.lower()):
            ctx.add(path, f"header names must be lowercase: write {json.dumps(value.lower())}")
            return INVALID
        if not _HEADER_NAME.fullmatch(value):
            ctx.add(path, f"{json.dumps(value)} is not an HTTP header name")
            return INVALID
        return value


def in_scope(match_labels: Iterable[tuple[str, str]], resource_namespace: str, labels: Mapping[str, str],
             namespace: str) -> bool:
    """The scope AuthorizationPolicy and RateLimit share: with a selector, the workloads of the resource's namespace
    whose labels hold every ``match_labels`` pair; without one, every workload of its namespace (of the mesh, in
    :data:`ROOT_NAMESPACE`)."""
    pairs = tuple(match_labels)
    if not pairs:
        return resource_namespace in (namespace, ROOT_NAMESPACE)
    return resource_namespace == namespace and all(labels.get(k) == v for k, v in pairs)


def unique_names(list_field: str, what: str):
    """An Obj rule: the ``name`` of every item of ``list_field`` is unique (items without a name are skipped).

    The error sits on the repeated item's name and points at the first one: ``<what> "x" is already defined at
    <list_field>[i]; <what> names must be unique``.
    """

    def rule(cleaned: dict, path: Path, ctx: Context) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(cleaned.get(list_field) or ()):
            name = item.get("name")
            if name is None:
                continue
            if name in seen:
                ctx.add(path.field(list_field).index(i).field("name"),
                        f"{what} {json.dumps(name)} is already defined at {list_field}[{seen[name]}]; "
                        f"{what} names must be unique")
            else:
                seen[name] = i

    return rule


def exactly_one(fields: Sequence[str], what: str):
    """An Obj rule: exactly one of ``fields`` is set."""

    def rule(cleaned: dict, path: Path, ctx: Context) -> None:
        given = [f for f in fields if cleaned.get(f) not in (None, False)]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            ctx.add(path, f"{what} must set exactly one of: {', '.join(fields)}{got}")

    return rule


def at_least_one(fields: Sequence[str], what: str):
    def rule(cleaned: dict, path: Path, ctx: Context) -> None:
        if not any(cleaned.get(f) is not None for f in fields):
            ctx.add(path, f"{what} must set at least one of: {', '.join(fields)}")

    return rule


def first_owners(resources: Sequence[Any], kind: str, clash: Callable[[str, Any], str]
                 ) -> tuple[dict[str, Any], list[FieldError]]:
    """``spec.hosts`` of every ``kind`` resource, in (namespace, name) order: each host's first owner, and an error at
    every later resource listing it again (``clash(host, first owner)`` says why and what to do)."""
    owner: dict[str, Any] = {}
    errors: list[FieldError] = []
    for r in sorted((r for r in resources if r.kind == kind), key=lambda r: (r.namespace, r.name)):
        for k, host in enumerate((r.spec or {}).get("hosts") or ()):
            if host in owner:
                errors.append(FieldError(str(r.key), None, f"spec.hosts[{k}]", clash(host, owner[host])))
            else:
                owner[host] = r
    return owner, errors


DATACENTER = Str(min_len=1, pattern=r"[a-z0-9_-]+",
                 pattern_hint="must be a Consul datacenter name (lowercase letters, digits, '-' and '_')")
"""A Consul datacenter name (a locality's region; DestinationRule locality and failover targets)."""


__all__ = ["DATACENTER", "first_owners", "EXPORT_TO", "TARGET_REF", "ROOT_NAMESPACE", "UINT32_MAX", "ServiceHost", "Number", "Dur", "seconds", "HeaderName", "exactly_one", "at_least_one", "in_scope", "unique_names"]
