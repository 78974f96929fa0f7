"""DestinationRule's traffic-policy blocks beyond balancing by key: connection pool, outlier detection, the hash
algorithm, warmup, zone-aware failover, PROXY protocol, retry budget, tunnel and the workload selector.

Each is spelled, typed and bounded as Istio's schema (``istio/api`` ``networking/v1/destination_rule.proto``) and
Envoy's limits where they are narrower (a maglev table is prime and at most 5,000,011 entries). Combinations Envoy
would silently ignore are refused with what to write instead (``retryBudget`` with ``maxRetries``, HTTP/2
settings with ``DO_NOT_UPGRADE``, ``consecutiveLocalOriginFailures`` without ``splitExternalLocalOriginErrors``).
:mod:`.cluster_options` maps them onto Envoy clusters; :mod:`.schema` assembles the kind.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from meshcore.errors import FieldError
from meshcore.resources.kinds._fields import UINT32_MAX, Dur, Number, at_least_one
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    Deprecated,
    Bool,
    Context,
    Custom,
    Enum,
    Int,
    LabelKey,
    Obj,
    Path,
    Required,
    Str,
    StringMap,
)

INT32_MAX = 2**31 - 1
RING_SIZE_MAX = 8_388_608  # Envoy's ring_hash_lb_config.minimum_ring_size bound (and default maximum)
MAGLEV_TABLE_MAX = 5_000_011  # Envoy's maglev_lb_config.table_size bound
HTTP2_KEEPALIVE_TIMEOUT_S = 20.0
"""``http2KeepAlive.timeout`` when only ``interval`` is given (Envoy requires one; gRPC's keepalive default)."""


# --- connection pool -----------------------------------------------------------------------------------

TCP_POOL_FIELDS = ("maxConnections", "connectTimeout", "maxConnectionDuration", "tcpKeepalive", "idleTimeout")
HTTP_POOL_FIELDS = ("http1MaxPendingRequests", "http2MaxRequests", "maxRetries", "maxRequestsPerConnection",
                    "idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams", "http2KeepAlive")
HTTP2_SETTINGS = ("maxConcurrentStreams", "http2KeepAlive")

TCP_KEEPALIVE = Obj({"probes": Int(1, UINT32_MAX), "time": Dur(min_s=1), "interval": Dur(min_s=1)})
"""Istio's ``tcpKeepalive`` -> the cluster's ``upstream_connection_options.tcp_keepalive`` (seconds, as the kernel)."""


def _keepalive_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    if "timeout" in cleaned and "interval" not in cleaned:
        ctx.add(path.field("interval"), "http2KeepAlive.timeout waits for the answer to a PING: give interval too "
                                        "(how often to send one)")
    elif not cleaned:
        ctx.add(path, "http2KeepAlive must set interval (and optionally timeout)")


HTTP2_KEEPALIVE = Obj({"interval": Dur(min_s=0.001), "timeout": Dur(min_s=0.001)}, rules=[_keepalive_rule])
"""``http2KeepAlive`` -> ``http2_protocol_options.connection_keepalive`` (PING frames on HTTP/2 connections)."""


def _http_pool_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    policy = cleaned.get("h2UpgradePolicy")
    if cleaned.get("useClientProtocol") and policy not in (None, "DEFAULT"):
        ctx.add(path.field("h2UpgradePolicy"), "useClientProtocol keeps the caller's protocol, which makes "
                                               "h2UpgradePolicy ineffective (as in Istio): set one of them")
    if policy == "DO_NOT_UPGRADE":
        for name in HTTP2_SETTINGS:
            if name in cleaned:
                ctx.add(path.field(name), f"{name} configures HTTP/2 connections, and h2UpgradePolicy "
                                          "DO_NOT_UPGRADE keeps them HTTP/1.1: drop one of the two")


HTTP_POOL = Obj(
    {
        "http1MaxPendingRequests": Int(1, UINT32_MAX),
        "http2MaxRequests": Int(1, UINT32_MAX),
        "maxRetries": Int(0, UINT32_MAX),
        "maxRequestsPerConnection": Int(0, UINT32_MAX),
        "idleTimeout": Dur(min_s=0.001),
        "h2UpgradePolicy": Enum("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"),
        "useClientProtocol": Bool(),
        "maxConcurrentStreams": Int(1, INT32_MAX),
        "http2KeepAlive": HTTP2_KEEPALIVE,
    },
    rules=[at_least_one(HTTP_POOL_FIELDS, "connectionPool.http"), _http_pool_rule],
)

TCP_POOL = Obj(
    {"maxConnections": Int(1, UINT32_MAX), "connectTimeout": Dur(min_s=0.001),
     "maxConnectionDuration": Dur(min_s=0.001), "tcpKeepalive": TCP_KEEPALIVE, "idleTimeout": Dur()},
    rules=[at_least_one(TCP_POOL_FIELDS, "connectionPool.tcp")],
)

CONNECTION_POOL = Obj({"tcp": TCP_POOL, "http": HTTP_POOL}, rules=[at_least_one(("tcp", "http"), "connectionPool")])
"""Istio's ``ConnectionPoolSettings`` (DestinationRule ``connectionPool``, Sidecar ``inboundConnectionPool``)."""


# --- outlier detection ---------------------------------------------------------------------------------

OUTLIER_FIELDS = ("consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
                  "maxEjectionPercent", "consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors",
                  "minHealthPercent")

CONSECUTIVE_ERRORS = Deprecated("consecutiveGatewayErrors", also={"consecutive5xxErrors": 0},
                                why="deprecated in Istio (it counts 502, 503 and 504 only, as Istio reads it)")
HTTP_ERROR_CODES = ("Envoy classifies upstream errors as 5xx or gateway errors (502, 503, 504) only: the per-code "
                    "outlier detection monitors are not in the Envoy meshcore runs; use consecutive5xxErrors or "
                    "consecutiveGatewayErrors")


def _local_origin_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    if "consecutiveLocalOriginFailures" in cleaned and not cleaned.get("splitExternalLocalOriginErrors"):
        ctx.add(path.field("consecutiveLocalOriginFailures"),
                "counts local-origin failures (connect timeouts, resets) only when they are told apart from the "
                "upstream's errors: set splitExternalLocalOriginErrors: true")


OUTLIER_DETECTION = Obj(
    {
        "consecutive5xxErrors": Int(0, UINT32_MAX),
        "consecutiveGatewayErrors": Int(0, UINT32_MAX),
        "interval": Dur(min_s=0.001),
        "baseEjectionTime": Dur(min_s=0.001),
        "maxEjectionPercent": Int(0, 100),
        "consecutiveLocalOriginFailures": Int(0, UINT32_MAX),
        "splitExternalLocalOriginErrors": Bool(),
        "minHealthPercent": Int(0, 100),
    },
    rules=[at_least_one(OUTLIER_FIELDS, "outlierDetection"), _local_origin_rule],
    refused={"outlierDetectionHttpErrorCodes": HTTP_ERROR_CODES},
    deprecated={"consecutiveErrors": CONSECUTIVE_ERRORS},
)


# --- load balancer: hash algorithm, warmup, zone-aware failover ------------------------------------------


def _prime(value: int) -> str | None:
    if value == 0 or value == 2 or (value > 2 and value % 2 and all(value % d for d in range(3, int(value**0.5) + 1, 2))):
        return None
    return f"must be a prime number (Envoy's maglev table size), got {value}; Envoy's default is 65537"


HASH_ALGORITHM_FIELDS: dict[str, Any] = {
    "ringHash": Obj({"minimumRingSize": Int(0, RING_SIZE_MAX)}),
    "maglev": Obj({"tableSize": Custom(Int(0, MAGLEV_TABLE_MAX), _prime)}),
    "minimumRingSize": Int(0, RING_SIZE_MAX),
}
"""``consistentHash``'s algorithm: ``ringHash`` (Envoy's RING_HASH, the default) or ``maglev`` (MAGLEV); 0 leaves
Envoy's default size (1024 ring entries, 65537 table entries)."""


def hash_algorithm_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    if "ringHash" in cleaned and "maglev" in cleaned:
        ctx.add(path.field("maglev"), "set either ringHash or maglev, not both")
    if "minimumRingSize" in cleaned:
        if "ringHash" in cleaned:
            ctx.add(path.field("minimumRingSize"), "minimumRingSize is Istio's deprecated spelling of "
                                                   "ringHash.minimumRingSize: write only ringHash")
        elif "maglev" in cleaned:
            ctx.add(path.field("minimumRingSize"), "sizes a hash ring, and maglev has none: use maglev.tableSize")


def _aggression(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0 (1.0 ramps traffic up linearly)"


WARMUP = Obj({"duration": Required(Dur(min_s=0.001)), "minimumPercent": Number(0, 100),
              "aggression": Custom(Number(0, 1e6), _aggression)})
"""``loadBalancer.warmup`` -> the balancer's ``slow_start_config`` (a new endpoint's share grows over ``duration``,
from ``minimumPercent`` (Envoy's default 10) along ``aggression`` (default 1.0, linear))."""

_SLOW_START_LB = (None, "UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST")


def warmup_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    if "warmup" in cleaned and "warmupDurationSecs" in cleaned:
        ctx.add(path.field("warmupDurationSecs"), "warmupDurationSecs is Istio's deprecated spelling of "
                                                  "warmup.duration: write only warmup")
    given = "warmup" if "warmup" in cleaned else "warmupDurationSecs" if "warmupDurationSecs" in cleaned else None
    if given is None:
        return
    if "consistentHash" in cleaned or cleaned.get("simple") not in _SLOW_START_LB:
        chosen = "consistentHash" if "consistentHash" in cleaned else cleaned.get("simple")
        ctx.add(path.field(given), f"Envoy warms endpoints up for ROUND_ROBIN and LEAST_REQUEST balancing only, not "
                                   f"{chosen}: choose one of those or drop {given}")


def ZONE_AWARE_LB_SETTING(locality: Obj) -> Obj:
    """Istio's ``zoneAwareLbSetting``: ``localityLbSetting``'s fields and rules (the same failover across
    datacenters), plus ``minClusterSize``: locality preference only while the caller's own datacenter has at least
    that many endpoints of the cluster (fewer: every endpoint shares the load, as Envoy's zone-aware routing)."""
    return Obj(
        {**{k: v for k, v in locality.fields.items()}, "minClusterSize": Int(1, UINT32_MAX)},
        rules=locality.rules,
    )


# --- PROXY protocol, retry budget, tunnel ----------------------------------------------------------------

PROXY_PROTOCOL = Obj({"version": Enum("V1", "V2")})
"""``proxyProtocol`` -> the ``envoy.transport_sockets.upstream_proxy_protocol`` socket around the cluster's own
(V1 when ``version`` is left out, Istio's default)."""

BUDGET_INTERVAL = ("Envoy's retry budget compares the retries active now with the requests active now, over no "
                   "interval; leave budgetInterval out (percent and minRetryConcurrency apply)")

RETRY_BUDGET = Obj({"percent": Number(0, 100), "minRetryConcurrency": Int(0, UINT32_MAX)},
                   refused={"budgetInterval": BUDGET_INTERVAL})
"""``retryBudget`` -> the DEFAULT circuit breaker's ``retry_budget`` (Envoy's defaults 20% and 3 when left out)."""


def retry_budget_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    """A policy level's ``retryBudget`` replaces its ``maxRetries``: Envoy ignores the fixed limit under a budget."""
    if "retryBudget" in cleaned and ((cleaned.get("connectionPool") or {}).get("http") or {}).get("maxRetries") is not None:
        ctx.add(path.field("retryBudget"), "Envoy ignores connectionPool.http.maxRetries under a retry budget: set "
                                           "one of the two")


TUNNEL = Obj(
    {
        "protocol": Enum("CONNECT", "POST"),
        "targetHost": Required(Str(min_len=1, max_len=253, pattern=r"[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?",
                                   pattern_hint="must be a host name or an IP address")),
        "targetPort": Required(Int(1, 65535)),
    }
)
"""``tunnel`` -> ``tcp_proxy.tunneling_config``: each TCP connection to the host (an HTTP proxy) is tunnelled to
``targetHost:targetPort`` with an HTTP CONNECT (Istio's default) or POST."""

WORKLOAD_SELECTOR = Obj({"matchLabels": StringMap(
    key=LabelKey(),
    value=Custom(Str(max_len=63), lambda v: "wildcards are not allowed in a label value" if "*" in v else None),
    max_items=4096)})
"""``workloadSelector``: the rule applies only to the proxies of its namespace's workloads holding every label."""


_MESH_PROXY_PROTOCOL = ("a PROXY protocol header is for an upstream outside the mesh that expects one; a mesh "
                        "service's proxy would read it as the start of its mTLS handshake and drop the connection: "
                        "declare host {host} with a ServiceEntry, or leave proxyProtocol out")
_MESH_TUNNEL = ("tunnels TCP through an HTTP proxy outside the mesh, the rule's host; {host} is not declared by any "
                "ServiceEntry (mesh services are reached over the mesh's own mTLS): declare the proxy with a "
                "ServiceEntry, or leave tunnel out")


_HTTP1_ONLY = ("configures HTTP/2 connections, and every port of the ServiceEntry of {host} is protocol HTTP "
               "(HTTP/1.1): add h2UpgradePolicy: UPGRADE (the server must speak HTTP/2), or declare the port HTTP2, or "
               "leave it out")


def _levels(spec: dict) -> list[tuple[str, dict]]:
    """Each traffic policy of a rule with its path: the host's, each subset's, and their port entries."""
    levels = [("spec.trafficPolicy", spec.get("trafficPolicy") or {})]
    levels += [(f"spec.subsets[{i}].trafficPolicy", s.get("trafficPolicy") or {})
               for i, s in enumerate(spec.get("subsets") or ())]
    return levels + [(f"{at}.portLevelSettings[{j}]", e) for at, policy in list(levels)
                     for j, e in enumerate(policy.get("portLevelSettings") or ())]


def _http1_problems(r: Resource, spec: dict) -> list[FieldError]:
    out = []
    for at, policy in _levels(spec):
        http = (policy.get("connectionPool") or {}).get("http") or {}
        if http.get("h2UpgradePolicy") == "UPGRADE" or http.get("useClientProtocol"):
            continue
        out += [FieldError(str(r.key), None, f"{at}.connectionPool.http.{name}",
                           f"{name} {_HTTP1_ONLY.format(host=json.dumps(spec.get('host')))}")
                for name in HTTP2_SETTINGS if name in http]
    return out


def outside_mesh_problems(resources: Iterable[Resource], rules: Iterable[Resource]) -> list[FieldError]:
    """``proxyProtocol`` and ``tunnel`` speak to upstreams outside the mesh: the rule's host is a ServiceEntry's;
    HTTP/2 settings towards a ServiceEntry host whose ports are all HTTP/1.1 would shape nothing."""
    entries = [r for r in resources if r.kind == "ServiceEntry"]
    external = {h for r in entries for h in (r.spec or {}).get("hosts") or ()}
    http1_only = {h for r in entries for h in (r.spec or {}).get("hosts") or ()
                  if (r.spec or {}).get("ports") and all(p.get("protocol") == "HTTP" for p in r.spec["ports"])}
    errors: list[FieldError] = []
    for r in rules:
        spec = r.spec or {}
        host = spec.get("host")
        if host in http1_only:
            errors += _http1_problems(r, spec)
        if host in external:
            continue
        for at, policy in _levels(spec)[:1 + len(spec.get("subsets") or ())]:
            for field, message in (("proxyProtocol", _MESH_PROXY_PROTOCOL), ("tunnel", _MESH_TUNNEL)):
                if field in policy:
                    errors.append(FieldError(str(r.key), None, f"{at}.{field}", message.format(host=json.dumps(host))))
    return errors


__all__ = ["CONNECTION_POOL", "OUTLIER_DETECTION", "HASH_ALGORITHM_FIELDS", "hash_algorithm_rule", "WARMUP",
           "warmup_rule", "ZONE_AWARE_LB_SETTING", "PROXY_PROTOCOL", "RETRY_BUDGET", "retry_budget_rule", "TUNNEL",
           "WORKLOAD_SELECTOR", "outside_mesh_problems", "HTTP2_KEEPALIVE_TIMEOUT_S"]
