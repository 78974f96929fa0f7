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


@dataclass(frozen=True)
class ConsistentHash:
    """Exactly one key is set (the schema's rule)."""

    http_header_name: str | None = None
    http_cookie: HttpCookie | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str | None = None


@dataclass(frozen=True)
class LocalityLbSetting:
    enabled: bool | None = None
    failover: tuple[tuple[str, str], ...] = ()  # (from, to) datacenters, in order


@dataclass(frozen=True)
class LoadBalancer:
    simple: str | None = None  # ROUND_ROBIN | LEAST_REQUEST | RANDOM
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None


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


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None  # seconds
    base_ejection_time: float | None = None  # seconds
    max_ejection_percent: int | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    port_level: tuple[tuple[int, "TrafficPolicy"], ...] = ()  # portLevelSettings by port number

    def at_port(self, port: int | None) -> "TrafficPolicy":
        """This level's policy for ``port``: its ``portLevelSettings`` entry overrides field by field (as Istio)."""
        found = next((p for n, p in self.port_level if n == port), None) if port is not None else None
        if found is None:
            return replace(self, port_level=())
        lb = self.load_balancer
        if found.load_balancer is not None:  # the level's locality failover stays (not settable per port)
            lb = replace(found.load_balancer, locality_lb_setting=lb.locality_lb_setting if lb is not None else None)
        return TrafficPolicy(
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
        if setting.enabled is False:
            return None
        return setting.failover


@dataclass(frozen=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()

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
        )


def _dur(value: str | None) -> float | None:
    return seconds(value) if value is not None else None


def _load_balancer(lb: Mapping[str, Any] | None) -> LoadBalancer | None:
    if lb is None:
        return None
    ch = lb.get("consistentHash")
    cookie = ch.get("httpCookie") if ch is not None else None
    loc = lb.get("localityLbSetting")
    return LoadBalancer(
        simple=lb.get("simple"),
        consistent_hash=None if ch is None else ConsistentHash(
            http_header_name=ch.get("httpHeaderName"),
            http_cookie=None if cookie is None else HttpCookie(cookie["name"], _dur(cookie.get("ttl")),
                                                               cookie.get("path", "")),
            use_source_ip=bool(ch.get("useSourceIp")),
            http_query_parameter_name=ch.get("httpQueryParameterName"),
        ),
        locality_lb_setting=None if loc is None else LocalityLbSetting(
            enabled=loc.get("enabled"),
            failover=tuple((pair["from"], pair["to"]) for pair in loc.get("failover") or ()),
        ),
    )


def _port_policy(entry: Mapping[str, Any]) -> TrafficPolicy:
    parsed = parse_policy({k: v for k, v in entry.items() if k != "port"})
    return parsed if parsed is not None else TrafficPolicy()


def parse_policy(policy: Mapping[str, Any] | None) -> TrafficPolicy | None:
    """A validated ``trafficPolicy`` mapping as a :class:`TrafficPolicy` (None when absent)."""
    if policy is None:
        return None
    pool, od = policy.get("connectionPool"), policy.get("outlierDetection")
    tcp = (pool or {}).get("tcp") or {}
    http = (pool or {}).get("http") or {}
    return TrafficPolicy(
        port_level=tuple((p["port"]["number"], _port_policy(p)) for p in policy.get("portLevelSettings") or ()),
        load_balancer=_load_balancer(policy.get("loadBalancer")),
        connection_pool=None if pool is None else ConnectionPool(
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
        ),
        outlier_detection=None if od is None else OutlierDetection(
            consecutive_5xx_errors=od.get("consecutive5xxErrors"),
            consecutive_gateway_errors=od.get("consecutiveGatewayErrors"),
            interval=_dur(od.get("interval")),
            base_ejection_time=_dur(od.get("baseEjectionTime")),
            max_ejection_percent=od.get("maxEjectionPercent"),
        ),
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
    )


def spec_of(rule: Resource) -> DestinationRuleSpec:
    """The typed spec of a DestinationRule resource (parsed once, kept on the resource)."""
    typed: DestinationRuleSpec = rule.typed
    return typed


__all__ = ["DestinationRuleSpec", "Subset", "TrafficPolicy", "LoadBalancer", "ConsistentHash", "HttpCookie",
           "LocalityLbSetting", "ConnectionPool", "OutlierDetection", "parse", "parse_policy", "spec_of"]
