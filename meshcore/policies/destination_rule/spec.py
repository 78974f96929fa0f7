"""DestinationRule's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into a :class:`DestinationRuleSpec`;
durations become seconds, absent fields ``None``. The plugin and its helpers read only these types.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from meshcore.resources.kinds._fields import seconds
from meshcore.resources.model import Resource


@dataclass(frozen=True)
class HttpCookie:
    name: str
    ttl: float | None = None  # seconds
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()  # (name, value) of each extra cookie attribute, in order


@dataclass(frozen=True)
class ConsistentHash:
    """Exactly one key is set (the schema's rule)."""

    http_header_name: str | None = None
    http_cookie: HttpCookie | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str | None = None
    minimum_ring_size: int | None = None  # ringHash.minimumRingSize (or Istio's older minimumRingSize)
    maglev_table_size: int | None = None  # maglev.tableSize; maglev set: Envoy's MAGLEV balancer
    maglev: bool = False


@dataclass(frozen=True)
class LocalityLbSetting:
    """``localityLbSetting``, or Istio's newer ``zoneAwareLbSetting`` (the same semantics)."""

    enabled: bool | None = None
    failover: tuple[tuple[str, str], ...] = ()  # (from, to) datacenters, in order
    min_cluster_size: int | None = None  # zoneAwareLbSetting: the caller's own datacenter needs this many endpoints
    # distribute: (from, ((to, weight), ...)) per caller locality pattern, in order (.locality_weights)
    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    failover_priority: tuple[str, ...] = ()  # failoverPriority: labels, most important first


@dataclass(frozen=True)
class Warmup:
    """``loadBalancer.warmup`` (or the older ``warmupDurationSecs``): Envoy's slow start of new endpoints."""

    duration: float  # seconds
    minimum_percent: float | None = None
    aggression: float | None = None


@dataclass(frozen=True)
class LoadBalancer:
    simple: str | None = None  # ROUND_ROBIN | LEAST_REQUEST | RANDOM
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    warmup: Warmup | None = None


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int | None = None
    connect_timeout: float | None = None  # seconds
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_retries: int | None = None
    max_requests_per_connection: int | None = None  # 0: unlimited (Istio's default)
    idle_timeout: float | None = None  # seconds, of an upstream HTTP connection without requests
    max_connection_duration: float | None = None  # seconds
    keepalive_probes: int | None = None
    keepalive_time: float | None = None  # seconds
    keepalive_interval: float | None = None  # seconds
    keepalive: bool = False  # tcpKeepalive given (even empty: the kernel's defaults)
    tcp_idle_timeout: float | None = None  # seconds, of a TCP-proxied connection without bytes either way
    h2_upgrade_policy: str | None = None  # DEFAULT | DO_NOT_UPGRADE | UPGRADE
    use_client_protocol: bool = False
    max_concurrent_streams: int | None = None
    http2_keepalive_interval: float | None = None  # seconds
    http2_keepalive_timeout: float | None = None  # seconds


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None  # seconds
    base_ejection_time: float | None = None  # seconds
    max_ejection_percent: int | None = None
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True)
class RetryBudget:
    percent: float | None = None  # None: Envoy's (and Istio's) 20%
    min_retry_concurrency: int | None = None  # None: Envoy's (and Istio's) 3


@dataclass(frozen=True)
class Tunnel:
    """``tunnel``: TCP connections to the host (a proxy) carry an HTTP CONNECT (or POST) to target_host:port."""

    target_host: str
    target_port: int
    protocol: str = "CONNECT"  # CONNECT | POST


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    port_level: tuple[tuple[int, "TrafficPolicy"], ...] = ()  # portLevelSettings by port number
    proxy_protocol: str | None = None  # V1 | V2: a PROXY protocol header on each upstream connection
    retry_budget: RetryBudget | None = None
    tunnel: Tunnel | None = None

    def at_port(self, port: int | None) -> "TrafficPolicy":
        """This level's policy for ``port``: its ``portLevelSettings`` entry overrides field by field (as Istio)."""
        found = next((p for n, p in self.port_level if n == port), None) if port is not None else None
        if found is None:
            return replace(self, port_level=())
        lb = self.load_balancer
        if found.load_balancer is not None:  # a port without its own locality setting keeps the level's
            own = found.load_balancer.locality_lb_setting
            lb = replace(found.load_balancer, locality_lb_setting=own if own is not None else (
                lb.locality_lb_setting if lb is not None else None))
        return replace(
            self, port_level=(),
            load_balancer=lb,
            connection_pool=found.connection_pool if found.connection_pool is not None else self.connection_pool,
            outlier_detection=(found.outlier_detection if found.outlier_detection is not None
                               else self.outlier_detection),
        )

    def locality_failover(self) -> tuple[tuple[str, str], ...] | None:
        """Whether this policy turns on locality-aware failover, and its ``(from, to)`` datacenter pairs.

        None means off: endpoints keep priority 0 everywhere (no locality preference). As in Istio,
        outlier detection alone turns it on (own datacenter first, every other one after); an explicit
        ``localityLbSetting`` turns it on even without outlier detection (Consul health checks already
        take failed instances out of the endpoints), and ``enabled: false`` turns it off.
        """
        setting = self.load_balancer.locality_lb_setting if self.load_balancer is not None else None
        if setting is None:
            return () if self.outlier_detection is not None else None
        if setting.enabled is False or setting.distribute:  # distribute weights localities instead (as Istio)
            return None
        return setting.failover

    def locality_distribute(self) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...] | None:
        """``localityLbSetting.distribute`` when it is set and not turned off with ``enabled: false``, else None."""
        setting = self.load_balancer.locality_lb_setting if self.load_balancer is not None else None
        if setting is None or setting.enabled is False or not setting.distribute:
            return None
        return setting.distribute


@dataclass(frozen=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class FailoverTarget:
    """Where traffic goes when its first target has no healthy instance: a host, optionally one of its subsets,
    optionally only its instances of one datacenter."""

    host: str
    subset: str | None = None
    datacenter: str | None = None


@dataclass(frozen=True)
class Failover:
    """``spec.failover[]``: the ordered targets of one subset (``subset`` None: the host itself and every subset
    without an entry of its own)."""

    subset: str | None
    targets: tuple[FailoverTarget, ...]


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    failover: tuple[Failover, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()  # workloadSelector.matchLabels: only these workloads' proxies

    def failover_for(self, subset: str | None) -> tuple[FailoverTarget, ...]:
        """The failover targets of ``subset`` (None: the host): its own entry, else the entry without subset."""
        found = next((f for f in self.failover if f.subset == subset), None)
        if found is None:
            found = next((f for f in self.failover if f.subset is None), None)
        return found.targets if found is not None else ()

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    @property
    def subset_names(self) -> list[str]:
        return [s.name for s in self.subsets]

    def effective_policy(self, subset: str | None = None, port: int | None = None) -> TrafficPolicy:
        """The traffic policy of the host (``subset`` None) or of one subset.

        As in Istio, a subset's ``trafficPolicy`` overrides the host's field by field: a subset that
        sets only ``loadBalancer`` keeps the host's ``connectionPool`` and ``outlierDetection``.
        Unlike Istio, a subset ``loadBalancer`` without ``localityLbSetting`` keeps the host's one
        (choosing a hash for one subset should not silently drop the host's datacenter failover).
        ``port`` (the host's service port): each level's ``portLevelSettings`` for it first override that level.
        """
        host = (self.traffic_policy or TrafficPolicy()).at_port(port)
        found = self.subset(subset) if subset is not None else None
        own = found.traffic_policy.at_port(port) if found is not None and found.traffic_policy is not None else None
        if own is None:
            return host
        host_locality = host.load_balancer.locality_lb_setting if host.load_balancer is not None else None
        lb = own.load_balancer if own.load_balancer is not None else host.load_balancer
        if lb is not None and host_locality is not None and lb.locality_lb_setting is None:
            lb = replace(lb, locality_lb_setting=host_locality)
        return TrafficPolicy(
            load_balancer=lb,
            connection_pool=own.connection_pool if own.connection_pool is not None else host.connection_pool,
            outlier_detection=own.outlier_detection if own.outlier_detection is not None else host.outlier_detection,
            proxy_protocol=own.proxy_protocol if own.proxy_protocol is not None else host.proxy_protocol,
            retry_budget=own.retry_budget if own.retry_budget is not None else host.retry_budget,
            tunnel=own.tunnel if own.tunnel is not None else host.tunnel,
        )


def _dur(value: str | None) -> float | None:
    return seconds(value) if value is not None else None


def _load_balancer(lb: Mapping[str, Any] | None) -> LoadBalancer | None:
    if lb is None:
        return None
    ch = lb.get("consistentHash")
    cookie = ch.get("httpCookie") if ch is not None else None
    loc = lb["localityLbSetting"] if "localityLbSetting" in lb else lb.get("zoneAwareLbSetting")  # not both
    warmup = lb.get("warmup")
    if warmup is None and lb.get("warmupDurationSecs") is not None:
        warmup = {"duration": lb["warmupDurationSecs"]}
    return LoadBalancer(
        simple=lb.get("simple") if lb.get("simple") != "UNSPECIFIED" else None,  # the mesh's choice
        consistent_hash=None if ch is None else ConsistentHash(
            http_header_name=ch.get("httpHeaderName"),
            http_cookie=None if cookie is None else HttpCookie(
                cookie["name"], _dur(cookie.get("ttl")), cookie.get("path", ""),
                tuple((a["name"], a.get("value", "")) for a in cookie.get("attributes") or ())),
            use_source_ip=bool(ch.get("useSourceIp")),
            http_query_parameter_name=ch.get("httpQueryParameterName"),
            minimum_ring_size=(ch.get("ringHash") or {}).get("minimumRingSize", ch.get("minimumRingSize")),
            maglev_table_size=(ch.get("maglev") or {}).get("tableSize"),
            maglev="maglev" in ch,
        ),
        locality_lb_setting=None if loc is None else LocalityLbSetting(
            enabled=loc.get("enabled"),
            failover=tuple((pair["from"], pair["to"]) for pair in loc.get("failover") or ()),
            min_cluster_size=loc.get("minClusterSize"),
            distribute=tuple((d["from"], tuple(d["to"].items())) for d in loc.get("distribute") or ()),
            failover_priority=tuple(loc.get("failoverPriority") or ()),
        ),
        warmup=None if warmup is None else Warmup(seconds(warmup["duration"]), warmup.get("minimumPercent"),
                                                  warmup.get("aggression")),
    )


def _port_policy(entry: Mapping[str, Any]) -> TrafficPolicy:
    parsed = parse_policy({k: v for k, v in entry.items() if k != "port"})
    return parsed if parsed is not None else TrafficPolicy()


def parse_policy(policy: Mapping[str, Any] | None) -> TrafficPolicy | None:
    """A validated ``trafficPolicy`` mapping as a :class:`TrafficPolicy` (None when absent)."""
    if policy is None:
        return None
    od = policy.get("outlierDetection")
    budget, tunnel = policy.get("retryBudget"), policy.get("tunnel")
    return TrafficPolicy(
        port_level=tuple((p["port"]["number"], _port_policy(p)) for p in policy.get("portLevelSettings") or ()),
        load_balancer=_load_balancer(policy.get("loadBalancer")),
        connection_pool=parse_pool(policy.get("connectionPool")),
        outlier_detection=None if od is None else OutlierDetection(
            consecutive_5xx_errors=od.get("consecutive5xxErrors"),
            consecutive_gateway_errors=od.get("consecutiveGatewayErrors"),
            interval=_dur(od.get("interval")),
            base_ejection_time=_dur(od.get("baseEjectionTime")),
            max_ejection_percent=od.get("maxEjectionPercent"),
            split_external_local_origin_errors=bool(od.get("splitExternalLocalOriginErrors")),
            consecutive_local_origin_failures=od.get("consecutiveLocalOriginFailures"),
            min_health_percent=od.get("minHealthPercent"),
        ),
        proxy_protocol=(policy["proxyProtocol"].get("version") or "V1") if "proxyProtocol" in policy else None,
        retry_budget=None if budget is None else RetryBudget(budget.get("percent"), budget.get("minRetryConcurrency")),
        tunnel=None if tunnel is None else Tunnel(tunnel["targetHost"], tunnel["targetPort"],
                                                  tunnel.get("protocol") or "CONNECT"),
    )


def parse_pool(pool: Mapping[str, Any] | None) -> ConnectionPool | None:
    """A validated ``connectionPool`` mapping (DestinationRule's, or a Sidecar's ``inboundConnectionPool``)."""
    if pool is None:
        return None
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    ka = http.get("http2KeepAlive") or {}
    return ConnectionPool(
        max_connections=tcp.get("maxConnections"),
        connect_timeout=_dur(tcp.get("connectTimeout")),
        http1_max_pending_requests=http.get("http1MaxPendingRequests"),
        http2_max_requests=http.get("http2MaxRequests"),
        max_retries=http.get("maxRetries"),
        max_requests_per_connection=http.get("maxRequestsPerConnection"),
        idle_timeout=_dur(http.get("idleTimeout")),
        max_connection_duration=_dur(tcp.get("maxConnectionDuration")),
        keepalive_probes=(tcp.get("tcpKeepalive") or {}).get("probes"),
        keepalive_time=_dur((tcp.get("tcpKeepalive") or {}).get("time")),
        keepalive_interval=_dur((tcp.get("tcpKeepalive") or {}).get("interval")),
        keepalive="tcpKeepalive" in tcp,
        tcp_idle_timeout=_dur(tcp.get("idleTimeout")),
        h2_upgrade_policy=http.get("h2UpgradePolicy"),
        use_client_protocol=bool(http.get("useClientProtocol")),
        max_concurrent_streams=http.get("maxConcurrentStreams"),
        http2_keepalive_interval=_dur(ka.get("interval")),
        http2_keepalive_timeout=_dur(ka.get("timeout")),
    )


def parse(spec: Mapping[str, Any]) -> DestinationRuleSpec:
    """The typed spec of a DestinationRule whose ``spec`` the schema accepted."""
    return DestinationRuleSpec(
        host=spec["host"],
        traffic_policy=parse_policy(spec.get("trafficPolicy")),
        subsets=tuple(
            Subset(s["name"], tuple(sorted((s.get("labels") or {}).items())), parse_policy(s.get("trafficPolicy")))
            for s in spec.get("subsets") or ()
        ),
        failover=tuple(
            Failover(f.get("subset"), tuple(FailoverTarget(t.get("host") or spec["host"], t.get("subset"),
                                                           t.get("datacenter"))
                                            for t in f.get("targets") or ()))
            for f in spec.get("failover") or ()
        ),
        selector=tuple(sorted(((spec.get("workloadSelector") or {}).get("matchLabels") or {}).items())),
    )


def spec_of(rule: Resource) -> DestinationRuleSpec:
    """The typed spec of a DestinationRule resource (parsed once, kept on the resource)."""
    typed: DestinationRuleSpec = rule.typed
    return typed


__all__ = ["DestinationRuleSpec", "Subset", "Failover", "FailoverTarget", "TrafficPolicy", "LoadBalancer", "ConsistentHash", "HttpCookie",
           "LocalityLbSetting", "ConnectionPool", "OutlierDetection", "RetryBudget", "Tunnel", "Warmup", "parse",
           "parse_policy", "parse_pool", "spec_of"]
