"""DestinationRule -> Envoy: a traffic policy on a cluster, and the hash policies a consistent-hash balancer needs."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import hash_policy_pb2

from ...xds.generate import vocab as c
from . import schema as dr
from .cluster_options import (
    apply_balancer,
    apply_outlier,
    apply_protocol,
    apply_proxy_protocol,
    apply_retry_budget,
    needs_protocol_options,
)
from .spec import ConnectionPool, TrafficPolicy

_SIMPLE = {
    dr.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    dr.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    dr.RANDOM: cluster_pb2.Cluster.RANDOM,
}


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def apply_policy(cluster: cluster_pb2.Cluster, policy: TrafficPolicy) -> None:
    """Set ``policy`` on ``cluster``; fields the policy leaves out stay.

    * ``loadBalancer.simple`` -> ``lb_policy``; ``consistentHash`` -> ``RING_HASH`` (the hash key goes
      on the routes, see :func:`route_hash_policies`);
    * ``connectionPool`` -> ``connect_timeout`` and the DEFAULT-priority circuit breaker thresholds;
    * ``outlierDetection`` -> ``outlier_detection``, enforced at 100% for the error kinds given (as Istio);
    * the rest (hash algorithm, warmup, upstream protocol, retry budget, PROXY protocol): :mod:`.cluster_options`.
    """
    lb = policy.load_balancer
    if lb is not None and lb.simple is not None:
        cluster.lb_policy = _SIMPLE[lb.simple]
    elif lb is not None and lb.consistent_hash is not None:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    if lb is not None:
        apply_balancer(cluster, lb)

    pool = policy.connection_pool
    if pool is not None:
        if pool.connect_timeout is not None:
            cluster.connect_timeout.CopyFrom(c.seconds(pool.connect_timeout))
        limits = {
            "max_connections": pool.max_connections,
            "max_pending_requests": pool.http1_max_pending_requests,
            "max_requests": pool.http2_max_requests,
            "max_retries": pool.max_retries,
        }
        if any(v is not None for v in limits.values()):
            thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
            for field, value in limits.items():
                if value is not None:
                    getattr(thresholds, field).CopyFrom(_u32(value))
            del cluster.circuit_breakers.thresholds[:]
            cluster.circuit_breakers.thresholds.append(thresholds)
        _connection_options(cluster, pool)

    od = policy.outlier_detection
    if od is not None:
        out = outlier_detection_pb2.OutlierDetection()
        if od.consecutive_5xx_errors is not None:
            n = od.consecutive_5xx_errors
            out.consecutive_5xx.CopyFrom(_u32(n))
            out.enforcing_consecutive_5xx.CopyFrom(_u32(100 if n > 0 else 0))
        if od.consecutive_gateway_errors is not None:
            n = od.consecutive_gateway_errors
            out.consecutive_gateway_failure.CopyFrom(_u32(n))
            out.enforcing_consecutive_gateway_failure.CopyFrom(_u32(100 if n > 0 else 0))
        if od.interval is not None:
            out.interval.CopyFrom(c.seconds(od.interval))
        if od.base_ejection_time is not None:
            out.base_ejection_time.CopyFrom(c.seconds(od.base_ejection_time))
        if od.max_ejection_percent is not None:
            out.max_ejection_percent.CopyFrom(_u32(od.max_ejection_percent))
        apply_outlier(cluster, out, od)
        cluster.outlier_detection.CopyFrom(out)
    if policy.retry_budget is not None:
        apply_retry_budget(cluster, policy.retry_budget)
    if policy.proxy_protocol is not None:
        apply_proxy_protocol(cluster, policy.proxy_protocol)


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _connection_options(cluster: cluster_pb2.Cluster, pool: ConnectionPool) -> None:
    """``maxRequestsPerConnection``, ``http.idleTimeout``, ``tcp.maxConnectionDuration`` -> the cluster's
    HttpProtocolOptions (``common_http_protocol_options``; mesh upstreams speak HTTP/1.1, kept explicit);
    ``tcpKeepalive`` -> ``upstream_connection_options.tcp_keepalive``."""
    common = {"max_requests_per_connection": pool.max_requests_per_connection, "idle_timeout": pool.idle_timeout,
              "max_connection_duration": pool.max_connection_duration}
    if any(v is not None for v in common.values()) or needs_protocol_options(pool):
        options = http_protocol_options_pb2.HttpProtocolOptions()
        if HTTP_PROTOCOL_OPTIONS in cluster.typed_extension_protocol_options:
            cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
        else:
            options.explicit_http_config.http_protocol_options.SetInParent()
        cho = options.common_http_protocol_options
        if pool.max_requests_per_connection:  # 0: unlimited, Envoy's default
            cho.max_requests_per_connection.CopyFrom(_u32(pool.max_requests_per_connection))
        if pool.idle_timeout is not None:
            cho.idle_timeout.CopyFrom(c.seconds(pool.idle_timeout))
        if pool.max_connection_duration is not None:
            cho.max_connection_duration.CopyFrom(c.seconds(pool.max_connection_duration))
        apply_protocol(cluster, options, pool)
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(c.pack(options))
    if pool.keepalive:
        ka = cluster.upstream_connection_options.tcp_keepalive
        ka.SetInParent()
        if pool.keepalive_probes is not None:
            ka.keepalive_probes.CopyFrom(_u32(pool.keepalive_probes))
        if pool.keepalive_time is not None:
            ka.keepalive_time.CopyFrom(_u32(int(pool.keepalive_time)))
        if pool.keepalive_interval is not None:
            ka.keepalive_interval.CopyFrom(_u32(int(pool.keepalive_interval)))


def route_hash_policies(policy: TrafficPolicy) -> list[rc.RouteAction.HashPolicy]:
    """The route hash policy a ``consistentHash`` load balancer needs (empty for any other policy)."""
    ch = policy.load_balancer.consistent_hash if policy.load_balancer is not None else None
    if ch is None:
        return []
    hp = rc.RouteAction.HashPolicy
    if ch.http_header_name is not None:
        return [hp(header=hp.Header(header_name=ch.http_header_name))]
    if ch.http_cookie is not None:
        out = hp.Cookie(name=ch.http_cookie.name, path=ch.http_cookie.path)
        if ch.http_cookie.ttl is not None:
            out.ttl.CopyFrom(c.seconds(ch.http_cookie.ttl))
        for name, value in ch.http_cookie.attributes:
            out.attributes.add(name=name, value=value)
        return [hp(cookie=out)]
    if ch.http_query_parameter_name is not None:
        return [hp(query_parameter=hp.QueryParameter(name=ch.http_query_parameter_name))]
    if ch.use_source_ip:
        return [hp(connection_properties=hp.ConnectionProperties(source_ip=True))]
    return []


def tcp_hash_policies(policy: TrafficPolicy) -> list[hash_policy_pb2.HashPolicy]:
    """For tcp_proxy: only ``useSourceIp`` means something without HTTP."""
    ch = policy.load_balancer.consistent_hash if policy.load_balancer is not None else None
    if ch is not None and ch.use_source_ip:
        return [hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp())]
    return []


__all__ = ["apply_policy", "route_hash_policies", "tcp_hash_policies"]
