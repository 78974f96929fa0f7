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
from typing import Any, Iterable, Mapping, Sequence

from meshcore.errors import FieldError
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import (
    EXPORT_TO,
    UINT32_MAX,
    Dur,
    HeaderName,
    ServiceHost,
    at_least_one,
    exactly_one,
    unique_names,
)
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
    Str,
    StringMap,
)

from .spec import parse, spec_of

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "DestinationRule"

ROUND_ROBIN, LEAST_REQUEST, RANDOM = "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"
SIMPLE_LB = (ROUND_ROBIN, LEAST_REQUEST, RANDOM)
HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


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
    },
    refused={
        "distribute": ("weighted traffic across localities is not implemented; use failover for ordered datacenters, "
                       "or a VirtualService weight split across subsets"),
        "failoverPriority": "use failover (from/to datacenters) and the node meta \"zone\"",
    },
)

LOAD_BALANCER = Obj(
    {"simple": _SimpleLb(*SIMPLE_LB), "consistentHash": CONSISTENT_HASH, "localityLbSetting": LOCALITY_LB_SETTING},
    rules=[_not_both_lb],
)

TCP_POOL_FIELDS = ("maxConnections", "connectTimeout", "maxConnectionDuration", "tcpKeepalive")
HTTP_POOL_FIELDS = ("http1MaxPendingRequests", "http2MaxRequests", "maxRetries", "maxRequestsPerConnection",
                    "idleTimeout")

TCP_KEEPALIVE = Obj({"probes": Int(1, UINT32_MAX), "time": Dur(min_s=1), "interval": Dur(min_s=1)})
"""Istio's ``tcpKeepalive`` -> the cluster's ``upstream_connection_options.tcp_keepalive`` (seconds, as the kernel)."""

CONNECTION_POOL = Obj(
    {
        "tcp": Obj(
            {"maxConnections": Int(1, UINT32_MAX), "connectTimeout": Dur(min_s=0.001),
             "maxConnectionDuration": Dur(min_s=0.001), "tcpKeepalive": TCP_KEEPALIVE},
            rules=[at_least_one(TCP_POOL_FIELDS, "connectionPool.tcp")],
        ),
        "http": Obj(
            {
                "http1MaxPendingRequests": Int(1, UINT32_MAX),
                "http2MaxRequests": Int(1, UINT32_MAX),
                "maxRetries": Int(0, UINT32_MAX),
                "maxRequestsPerConnection": Int(0, UINT32_MAX),
                "idleTimeout": Dur(min_s=0.001),
            },
            rules=[at_least_one(HTTP_POOL_FIELDS, "connectionPool.http")],
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

_OUTSIDE_MESH = ("meshcore's upstreams are mesh services, always reached over the mesh's own mTLS "
                 "(ISTIO_MUTUAL); TLS settings for a service outside the mesh need a ServiceEntry, which meshcore "
                 "does not have yet")


class _TlsMode(Enum):
    """``ISTIO_MUTUAL`` is what meshcore does for every upstream anyway; the other modes are for services outside
    the mesh (or turn the mesh's mTLS off towards a mesh service, which PeerAuthentication decides here)."""

    def __init__(self) -> None:
        super().__init__("ISTIO_MUTUAL")

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if value in ("DISABLE", "SIMPLE", "MUTUAL"):
            ctx.add(path, f"{json.dumps(value)} is not supported: {_OUTSIDE_MESH}; write ISTIO_MUTUAL or leave tls out "
                          "(to let a workload accept plaintext, use a PeerAuthentication with mode PERMISSIVE)")
            return INVALID
        return super().check(value, path, ctx)


TLS = Obj(
    {"mode": Required(_TlsMode())},
    refused={f: _OUTSIDE_MESH for f in ("clientCertificate", "privateKey", "caCertificates", "credentialName",
                                        "subjectAltNames", "sni", "insecureSkipVerify", "caCrl")},
)

def _unique_ports(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[int, int] = {}
    for i, entry in enumerate(cleaned.get("portLevelSettings") or ()):
        n = entry["port"]["number"]
        if n in seen:
            ctx.add(path.field("portLevelSettings").index(i).field("port").field("number"),
                    f"port {n} already has settings at portLevelSettings[{seen[n]}]; one entry per port")
        seen.setdefault(n, i)


_PORT_LOCALITY = ("locality failover is per host in meshcore (a host's endpoints are shared by all its ports); "
                  "set localityLbSetting on the host's or the subset's trafficPolicy")

PORT_LOAD_BALANCER = Obj(
    {"simple": _SimpleLb(*SIMPLE_LB), "consistentHash": CONSISTENT_HASH},
    rules=[_not_both_lb],
    refused={"localityLbSetting": _PORT_LOCALITY},
)

PORT_TRAFFIC_POLICY = Obj(
    {
        "port": Required(Obj({"number": Required(Int(1, 65535))})),
        "loadBalancer": PORT_LOAD_BALANCER,
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": TLS,
    }
)
"""``portLevelSettings[]``: the policy for one port of the host (the service's own port as registered in Consul);
it overrides the level's fields for that port, as Istio's."""

TRAFFIC_POLICY = Obj(
    {"loadBalancer": LOAD_BALANCER, "connectionPool": CONNECTION_POOL, "outlierDetection": OUTLIER_DETECTION,
     "tls": TLS, "portLevelSettings": ListOf(PORT_TRAFFIC_POLICY)},
    rules=[_unique_ports],
)

SUBSET = Obj(
    {
        "name": Required(DNSLabel()),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "trafficPolicy": TRAFFIC_POLICY,
    }
)


SPEC = Obj(
    {"host": Required(ServiceHost()), "trafficPolicy": TRAFFIC_POLICY, "subsets": ListOf(SUBSET)},
    rules=[unique_names("subsets", "subset")],
    refused={"exportTo": EXPORT_TO},
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    parse=parse,
    summary="subsets of a service by labels, load balancing, connection limits (circuit breakers), outlier detection",
)


# --- resolution (pure) ---------------------------------------------------------------------------------


def _ordered(resources: Iterable[Resource], kind: str) -> list[Resource]:
    return sorted((r for r in resources if r.kind == kind), key=lambda r: (r.namespace, r.name))


def service_port(catalog: Any, host: str) -> int | None:
    """The port ``portLevelSettings`` name for ``host``: its instances' own port as registered in Consul, when
    they all share one (None otherwise: port-level settings then apply to no port)."""
    ports = {inst.port for inst in catalog.instances_of(host)}
    return ports.pop() if len(ports) == 1 else None


def rule_for(resources: Iterable[Resource], host: str) -> Resource | None:
    """The DestinationRule for ``host``: the first by (namespace, name) whose ``spec.host`` is ``host``."""
    for r in _ordered(resources, KIND_NAME):
        if spec_of(r).host == host:
            return r
    return None


def subset_names(rule: Resource | None) -> list[str]:
    return spec_of(rule).subset_names if rule is not None else []


def selects(labels: Mapping[str, str], subset_labels: Mapping[str, str] | None) -> bool:
    """Whether a workload with ``labels`` belongs to a subset selecting ``subset_labels`` (none: every workload)."""
    return all(labels.get(k) == v for k, v in (subset_labels or {}).items())


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks: one DestinationRule per host (a second one would be silently ignored)."""
    errors: list[FieldError] = []
    first: dict[str, Resource] = {}
    for r in _ordered(resources, KIND_NAME):
        host = spec_of(r).host
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
    "rule_for",
    "subset_names",
    "selects",
    "validate_set",
    "service_port",
]
