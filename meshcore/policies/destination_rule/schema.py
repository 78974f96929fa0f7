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
  # or weights per caller locality: {distribute: [{from: "dc1/*", to: {"dc1/*": 80, "dc2/*": 20}}]}, or
  # priorities by label: {failoverPriority: [topology.kubernetes.io/zone, version]}  (see .locality_schema)
  subsets:
  - name: v1
    labels: {version: v1}             # workload labels: app, every Consul meta key, tag:<t>
  - name: v2
    labels: {version: v2}
    trafficPolicy:                    # overrides the host's, field by field (loadBalancer, connectionPool, ...)
      loadBalancer:
        consistentHash: {httpHeaderName: end-user}   # or httpCookie {name, ttl, path}, useSourceIp, httpQueryParameterName
  failover:                           # meshcore: when v1 has no healthy instance, v2, then another service
  - {subset: v1, targets: [{subset: v2}, {host: reviews-backup}]}   # see .failover_schema
  workloadSelector: {matchLabels: {app: productpage}}   # optional: only these callers (namespace's workloads)
```

Also Istio's ``warmup``, ``zoneAwareLbSetting``, ``consistentHash.ringHash`` / ``maglev``, ``connectionPool.http``
``h2UpgradePolicy`` / ``useClientProtocol`` / ``maxConcurrentStreams`` / ``http2KeepAlive``, ``tcp.idleTimeout``,
``outlierDetection`` local-origin fields and ``minHealthPercent``, ``retryBudget``, ``proxyProtocol`` and
``tunnel`` (:mod:`.fields_schema`).

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
    DATACENTER,
    EXPORT_TO,
    Dur,
    HeaderName,
    ServiceHost,
    exactly_one,
    in_scope,
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

from .failover_schema import FAILOVER, failover_problems, failover_rule
from .locality_schema import DISTRIBUTE, FAILOVER_PRIORITY, locality_rule
from .fields_schema import (
    CONNECTION_POOL,
    OUTLIER_DETECTION,
    PROXY_PROTOCOL,
    RETRY_BUDGET,
    TUNNEL,
    WARMUP,
    WORKLOAD_SELECTOR,
    ZONE_AWARE_LB_SETTING,
    HASH_ALGORITHM_FIELDS,
    hash_algorithm_rule,
    outside_mesh_problems,
    retry_budget_rule,
    warmup_rule,
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
        ctx.add(path, "loadBalancer must set simple, consistentHash, warmup or localityLbSetting")
    if "localityLbSetting" in cleaned and "zoneAwareLbSetting" in cleaned:
        ctx.add(path.field("zoneAwareLbSetting"), "zoneAwareLbSetting is Istio's newer name of localityLbSetting: "
                                                  "set one of them")


class _SimpleLb(Enum):
    """Istio's ``simple`` values: ``UNSPECIFIED`` leaves the choice to the mesh (the cluster's ROUND_ROBIN),
    ``LEAST_CONN`` is Istio's deprecated spelling, ``PASSTHROUGH`` needs an original destination."""

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if value == "LEAST_CONN":
            ctx.note(path, "LEAST_CONN is Istio's deprecated spelling of LEAST_REQUEST: read as LEAST_REQUEST")
            return "LEAST_REQUEST"
        if value == "PASSTHROUGH":
            ctx.add(path, '"PASSTHROUGH" is not supported: it forwards to the address the app dialled, which needs '
                          "traffic capture, and meshcore's proxies see no original destination (apps connect to "
                          "explicit local ports); choose ROUND_ROBIN, LEAST_REQUEST or RANDOM")
            return INVALID
        if value == "UNSPECIFIED":
            return value
        return super().check(value, path, ctx)


COOKIE_ATTRIBUTE = Obj({"name": Required(Str(min_len=1, max_len=16384, pattern=r"[!#$%&'*+.^_`|~0-9A-Za-z-]+",
                                                 pattern_hint="must be a cookie attribute name such as SameSite")),
                         "value": Str(max_len=16384, pattern=r"[^;\x00-\x1f]*",
                                      pattern_hint="must not hold ';' or control characters")})
"""``httpCookie.attributes[]``: extra attributes of the cookie Envoy sets (``SameSite=Strict``, ``Secure``)."""

HTTP_COOKIE = Obj({"name": Required(Str(min_len=1)), "ttl": Dur(), "path": Str(min_len=1),
                   "attributes": ListOf(COOKIE_ATTRIBUTE)})

CONSISTENT_HASH = Obj(
    {
        "httpHeaderName": HeaderName(min_len=1),
        "httpCookie": HTTP_COOKIE,
        "useSourceIp": Bool(),
        "httpQueryParameterName": Str(min_len=1),
        **HASH_ALGORITHM_FIELDS,
    },
    rules=[exactly_one(HASH_KEYS, "consistentHash"), hash_algorithm_rule],
)

# Locality-aware failover: a locality is a Consul datacenter (Envoy region) plus the node meta ``zone``.


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
        "distribute": DISTRIBUTE,  # weights per caller locality (.locality_schema, .locality_weights)
        "failoverPriority": FAILOVER_PRIORITY,
    },
    rules=[locality_rule],
)

LOAD_BALANCER = Obj(
    {"simple": _SimpleLb(*SIMPLE_LB), "consistentHash": CONSISTENT_HASH, "localityLbSetting": LOCALITY_LB_SETTING,
     "zoneAwareLbSetting": ZONE_AWARE_LB_SETTING(LOCALITY_LB_SETTING), "warmup": WARMUP,
     "warmupDurationSecs": Dur(min_s=0.001)},
    rules=[_not_both_lb, warmup_rule],
)

POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection")

from .tls_origination import TLS  # noqa: E402 (tls modes and origination: tls17)


def _unique_ports(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[int, int] = {}
    for i, entry in enumerate(cleaned.get("portLevelSettings") or ()):
        n = entry["port"]["number"]
        if n in seen:
            ctx.add(path.field("portLevelSettings").index(i).field("port").field("number"),
                    f"port {n} already has settings at portLevelSettings[{seen[n]}]; one entry per port")
        seen.setdefault(n, i)


PORT_TRAFFIC_POLICY = Obj(
    {
        "port": Required(Obj({"number": Required(Int(1, 65535))})),
        "loadBalancer": LOAD_BALANCER,  # its locality setting too: that port's clusters (.locality_ports)
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": TLS,
    }
)
"""``portLevelSettings[]``: the policy for one port of the host (the service's own port as registered in Consul);
it overrides the level's fields for that port, as Istio's."""

TRAFFIC_POLICY = Obj(
    {"loadBalancer": LOAD_BALANCER, "connectionPool": CONNECTION_POOL, "outlierDetection": OUTLIER_DETECTION,
     "tls": TLS, "portLevelSettings": ListOf(PORT_TRAFFIC_POLICY), "proxyProtocol": PROXY_PROTOCOL,
     "retryBudget": RETRY_BUDGET, "tunnel": TUNNEL},
    rules=[_unique_ports, retry_budget_rule],
)

SUBSET = Obj(
    {
        "name": Required(DNSLabel()),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "trafficPolicy": TRAFFIC_POLICY,
    }
)


SPEC = Obj(
    {"host": Required(ServiceHost(external=True)), "trafficPolicy": TRAFFIC_POLICY, "subsets": ListOf(SUBSET),
     "failover": FAILOVER, "workloadSelector": WORKLOAD_SELECTOR},
    rules=[unique_names("subsets", "subset"), failover_rule],
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


_BY_HOST: dict[int, tuple[tuple, dict[str, list[Resource]]]] = {}


def _by_host(resources: Iterable[Resource]) -> dict[str, list[Resource]]:
    """The DestinationRules of ``resources`` by host, each list by (namespace, name); computed once per snapshot's
    resource tuple (immutable), so a proxy's many lookups do not each sort every rule."""
    key = id(resources)
    hit = _BY_HOST.get(key) if isinstance(resources, tuple) else None
    if hit is not None and hit[0] is resources:
        return hit[1]
    index: dict[str, list[Resource]] = {}
    for r in _ordered(resources, KIND_NAME):
        index.setdefault(spec_of(r).host, []).append(r)
    if isinstance(resources, tuple):
        if len(_BY_HOST) >= 8:
            _BY_HOST.clear()
        _BY_HOST[key] = (resources, index)
    return index


def rule_for(resources: Iterable[Resource], host: str,
             workload: tuple[Mapping[str, str], str] | None = None) -> Resource | None:
    """The DestinationRule for ``host`` as the workload ``(labels, namespace)`` calling it sees it.

    As Istio: a rule whose ``workloadSelector`` selects the workload (its namespace's workloads holding every
    label) comes first, else the rule without a selector; the first by (namespace, name) of each. Without a
    workload (validation across resources), the rule without a selector, else the first with one.
    """
    fallback: Resource | None = None
    general: Resource | None = None
    for r in _by_host(resources).get(host, ()):
        typed = spec_of(r)
        if not typed.selector:
            general = general or r
            if workload is None:
                return r
        elif workload is None:
            fallback = fallback or r
        elif in_scope(typed.selector, r.namespace, workload[0], workload[1]):
            return r
    return general or fallback


def subset_names(rule: Resource | None) -> list[str]:
    return spec_of(rule).subset_names if rule is not None else []


def selects(labels: Mapping[str, str], subset_labels: Mapping[str, str] | None) -> bool:
    """Whether a workload with ``labels`` belongs to a subset selecting ``subset_labels`` (none: every workload)."""
    return all(labels.get(k) == v for k, v in (subset_labels or {}).items())


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Cross-resource checks: one DestinationRule per host and workload selector (a second one would be silently
    ignored), every failover target subset of another host defined by that host's rule, and ``proxyProtocol`` /
    ``tunnel`` only towards ServiceEntry hosts."""
    errors: list[FieldError] = []
    first: dict[str, Resource] = {}
    selected: dict[tuple[str, str, tuple], Resource] = {}
    for r in _ordered(resources, KIND_NAME):
        typed = spec_of(r)
        host = typed.host
        if typed.selector:
            key = (host, r.namespace, typed.selector)
            if key in selected:
                other = selected[key]
                errors.append(FieldError(str(r.key), None, "spec.workloadSelector",
                                         f"DestinationRule {other.namespace}/{other.name} already selects these "
                                         f"workloads for host {json.dumps(host)}; put their policies in one rule"))
            selected.setdefault(key, r)
            continue
        if host in first:
            other = first[host]
            errors.append(FieldError(str(r.key), None, "spec.host",
                                     f"host {json.dumps(host)} already has DestinationRule {other.namespace}/{other.name}; "
                                     "put every subset and policy of a host in one DestinationRule (or give this "
                                     "one a workloadSelector)"))
        else:
            first[host] = r
    errors.extend(outside_mesh_problems(resources, _ordered(resources, KIND_NAME)))
    for r in first.values():
        for field, message in failover_problems(spec_of(r).host, r.spec.get("failover") or (),
                                                lambda h: spec_of(first[h]).subset_names if h in first else None):
            errors.append(FieldError(str(r.key), None, field, message))
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
