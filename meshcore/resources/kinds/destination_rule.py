"""DestinationRule: what happens to traffic for a service once routing picked it (spelled like Istio's).

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews                       # a Consul service name
  trafficPolicy:                      # for every cluster of the host (subsets inherit it)
    loadBalancer: {simple: LEAST_REQUEST}      # ROUND_ROBIN | LEAST_REQUEST | RANDOM, or consistentHash
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  # locality-aware failover (Consul datacenters): own datacenter first, then the listed one, then the rest
  # trafficPolicy.loadBalancer.localityLbSetting: {failover: [{from: dc1, to: dc2}, {from: dc2, to: dc1}]}
  subsets:
  - name: v1
    labels: {version: v1}             # workload labels: app, every Consul meta key, tag:<t>
  - name: v2
    labels: {version: v2}
    trafficPolicy:                    # overrides the host's, field by field (loadBalancer, connectionPool, ...)
      loadBalancer:
        consistentHash: {httpHeaderName: end-user}   # or httpCookie {name, ttl, path}, useSourceIp, httpQueryParameterName
```

Each subset becomes its own Envoy cluster (``outbound:<host>|<source>|<subset>``) whose endpoints
are the healthy instances carrying every label of the subset. Which rule applies when several
name one host: the first by (namespace, name); :func:`validate_set` refuses a second one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

from meshcore.durations import parse_duration
from meshcore.errors import FieldError
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    INVALID,
    Bool,
    Context,
    DNSLabel,
    Enum,
    Int,
    LabelKey,
    ListOf,
    Obj,
    Path,
    Required,
    Schema,
    Str,
    StringMap,
    type_name,
)

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "DestinationRule"

ROUND_ROBIN, LEAST_REQUEST, RANDOM = "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"
SIMPLE_LB = (ROUND_ROBIN, LEAST_REQUEST, RANDOM)
HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
UINT32_MAX = 2**32 - 1

_SERVICE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


# --- schema pieces shared with VirtualService ----------------------------------------------------------


class ServiceHost(Schema):
    """A host as meshcore names it: a Consul service name (``reviews``), never a DNS name or a wildcard."""

    expected = "a service name"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if _SERVICE.fullmatch(value):
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


# --- traffic policy -------------------------------------------------------------------------------------


def _not_both_lb(cleaned: dict, path: Path, ctx: Context) -> None:
    if "simple" in cleaned and "consistentHash" in cleaned:
        ctx.add(path, "set either simple or consistentHash, not both")
    elif not cleaned:
        ctx.add(path, "loadBalancer must set simple, consistentHash or localityLbSetting")


class _SimpleLb(Enum):
    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if value == "LEAST_CONN":
            ctx.add(path, 'LEAST_CONN is Istio\'s deprecated spelling: write "LEAST_REQUEST"')
            return INVALID
        return super().check(value, path, ctx)


HTTP_COOKIE = Obj({"name": Required(Str(min_len=1)), "ttl": Dur(), "path": Str(min_len=1)})

CONSISTENT_HASH = Obj(
    {
        "httpHeaderName": HeaderName(min_len=1),
        "httpCookie": HTTP_COOKIE,
        "useSourceIp": Bool(),
        "httpQueryParameterName": Str(min_len=1),
    },
    rules=[exactly_one(HASH_KEYS, "consistentHash")],
)

# Locality-aware failover: a locality is a Consul datacenter (Envoy region) plus the node meta ``zone``.
DATACENTER = Str(min_len=1, pattern=r"[a-z0-9_-]+",
                 pattern_hint="must be a Consul datacenter name (lowercase letters, digits, '-' and '_')")


class _NotSupported(Schema):
    """An Istio field meshcore does not implement: refused with what to use instead (never silently ignored)."""

    def __init__(self, message: str):
        self.message = message

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        ctx.add(path, self.message)
        return INVALID


def _failover_pair(cleaned: dict, path: Path, ctx: Context) -> None:
    if cleaned["from"] == cleaned["to"]:
        ctx.add(path.field("to"), f"fails over from {json.dumps(cleaned['from'])} to itself; "
                                  "name another datacenter (the own datacenter is always tried first)")


LOCALITY_LB_SETTING = Obj(
    {
        "enabled": Bool(),
        # Ordered: several entries with one ``from`` are tried in their order; a repeated pair is an error.
        "failover": ListOf(Obj({"from": Required(DATACENTER), "to": Required(DATACENTER)}, rules=[_failover_pair]),
                           unique=True),
        "distribute": _NotSupported("distribute (weighted traffic across localities) is not supported; use failover "
                                    "for ordered datacenters, or a VirtualService weight split across subsets"),
        "failoverPriority": _NotSupported("failoverPriority is not supported; use failover "
                                          "(from/to datacenters) and the node meta \"zone\""),
    },
)

LOAD_BALANCER = Obj(
    {"simple": _SimpleLb(*SIMPLE_LB), "consistentHash": CONSISTENT_HASH, "localityLbSetting": LOCALITY_LB_SETTING},
    rules=[_not_both_lb],
)

CONNECTION_POOL = Obj(
    {
        "tcp": Obj(
            {"maxConnections": Int(1, UINT32_MAX), "connectTimeout": Dur(min_s=0.001)},
            rules=[at_least_one(("maxConnections", "connectTimeout"), "connectionPool.tcp")],
        ),
        "http": Obj(
            {
                "http1MaxPendingRequests": Int(1, UINT32_MAX),
                "http2MaxRequests": Int(1, UINT32_MAX),
                "maxRetries": Int(0, UINT32_MAX),
            },
            rules=[at_least_one(("http1MaxPendingRequests", "http2MaxRequests", "maxRetries"), "connectionPool.http")],
        ),
    },
    rules=[at_least_one(("tcp", "http"), "connectionPool")],
)

OUTLIER_FIELDS = ("consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime", "maxEjectionPercent")

OUTLIER_DETECTION = Obj(
    {
        "consecutive5xxErrors": Int(0, UINT32_MAX),
        "consecutiveGatewayErrors": Int(0, UINT32_MAX),
        "interval": Dur(min_s=0.001),
        "baseEjectionTime": Dur(min_s=0.001),
        "maxEjectionPercent": Int(0, 100),
    },
    rules=[at_least_one(OUTLIER_FIELDS, "outlierDetection")],
)

POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection")

TRAFFIC_POLICY = Obj(
    {"loadBalancer": LOAD_BALANCER, "connectionPool": CONNECTION_POOL, "outlierDetection": OUTLIER_DETECTION}
)

SUBSET = Obj(
    {
        "name": Required(DNSLabel()),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "trafficPolicy": TRAFFIC_POLICY,
    }
)


def _unique_subsets(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[str, int] = {}
    for i, subset in enumerate(cleaned.get("subsets") or ()):
        name = subset["name"]
        if name in seen:
            ctx.add(path.field("subsets").index(i).field("name"),
                    f"subset {json.dumps(name)} is already defined at subsets[{seen[name]}]; subset names must be unique")
        else:
            seen[name] = i


SPEC = Obj(
    {"host": Required(ServiceHost()), "trafficPolicy": TRAFFIC_POLICY, "subsets": ListOf(SUBSET)},
    rules=[_unique_subsets],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    summary="subsets of a service by labels, load balancing, connection limits (circuit breakers), outlier detection",
)


# --- resolution (pure) ---------------------------------------------------------------------------------


def _ordered(resources: Iterable[Resource], kind: str) -> list[Resource]:
    return sorted((r for r in resources if r.kind == kind), key=lambda r: (r.namespace, r.name))


def rule_for(resources: Iterable[Resource], host: str) -> Resource | None:
    """The DestinationRule for ``host``: the first by (namespace, name) whose ``spec.host`` is ``host``."""
    for r in _ordered(resources, KIND_NAME):
        if (r.spec or {}).get("host") == host:
            return r
    return None


def subset_of(rule: Resource | None, name: str) -> dict | None:
    """The subset ``name`` of ``rule`` (its spec mapping), or None."""
    for s in ((rule.spec or {}).get("subsets") or ()) if rule is not None else ():
        if s.get("name") == name:
            return s
    return None


def subset_names(rule: Resource | None) -> list[str]:
    return [s["name"] for s in ((rule.spec or {}).get("subsets") or ())] if rule is not None else []


def effective_policy(rule: Resource | None, subset: str | None = None) -> dict:
    """The traffic policy of the host (``subset`` None) or of one subset.

    As in Istio, a subset's ``trafficPolicy`` overrides the host's field by field: a subset that
    sets only ``loadBalancer`` keeps the host's ``connectionPool`` and ``outlierDetection``.
    Unlike Istio, a subset ``loadBalancer`` without ``localityLbSetting`` keeps the host's one
    (choosing a hash for one subset should not silently drop the host's datacenter failover).
    """
    if rule is None:
        return {}
    policy = dict((rule.spec or {}).get("trafficPolicy") or {})
    if subset is not None:
        own = (subset_of(rule, subset) or {}).get("trafficPolicy") or {}
        host_locality = (policy.get("loadBalancer") or {}).get("localityLbSetting")
        policy.update({k: v for k, v in own.items() if k in POLICY_FIELDS})
        lb = policy.get("loadBalancer") or {}
        if host_locality is not None and "localityLbSetting" not in lb:
            policy["loadBalancer"] = {**lb, "localityLbSetting": host_locality}
    return policy


def selects(labels: Mapping[str, str], subset_labels: Mapping[str, str] | None) -> bool:
    """Whether a workload with ``labels`` belongs to a subset selecting ``subset_labels`` (none: every workload)."""
    return all(labels.get(k) == v for k, v in (subset_labels or {}).items())


def locality_failover(policy: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """Whether a traffic policy turns on locality-aware failover, and its ``(from, to)`` datacenter pairs.

    None means off: endpoints keep priority 0 everywhere (no locality preference). As in Istio,
    outlier detection alone turns it on (own datacenter first, every other one after); an explicit
    ``localityLbSetting`` turns it on even without outlier detection (Consul health checks already
    take failed instances out of the endpoints), and ``enabled: false`` turns it off.
    """
    setting = (policy.get("loadBalancer") or {}).get("localityLbSetting")
    if setting is None:
        return () if policy.get("outlierDetection") else None
    if setting.get("enabled") is False:
        return None
    return tuple((pair["from"], pair["to"]) for pair in setting.get("failover") or ())


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks: one DestinationRule per host (a second one would be silently ignored)."""
    errors: list[FieldError] = []
    first: dict[str, Resource] = {}
    for r in _ordered(resources, KIND_NAME):
        host = (r.spec or {}).get("host")
        if host in first:
            other = first[host]
            errors.append(FieldError(str(r.key), None, "spec.host",
                                     f"host {json.dumps(host)} already has DestinationRule {other.namespace}/{other.name}; "
                                     "put every subset and policy of a host in one DestinationRule"))
        else:
            first[host] = r
    return errors


__all__ = [
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "SIMPLE_LB",
    "HASH_KEYS",
    "ServiceHost",
    "Number",
    "Dur",
    "HeaderName",
    "seconds",
    "exactly_one",
    "at_least_one",
    "rule_for",
    "subset_of",
    "subset_names",
    "effective_policy",
    "locality_failover",
    "selects",
    "validate_set",
]
