"""DestinationRule -> Envoy, the cluster fields beyond limits and ejection (pure; called by :func:`.clusters.apply_policy`).

* ``consistentHash.ringHash`` / ``maglev`` -> ``ring_hash_lb_config`` / ``MAGLEV`` with ``maglev_lb_config``;
* ``warmup`` -> the balancer's ``slow_start_config``;
* ``connectionPool.http.h2UpgradePolicy`` / ``useClientProtocol`` -> the cluster's upstream protocol
  (``HttpProtocolOptions``) and, on the mesh's own mTLS hop, the ALPN the client offers (so both ends agree);
  ``maxConcurrentStreams`` / ``http2KeepAlive`` -> its HTTP/2 options;
* ``outlierDetection.splitExternalLocalOriginErrors`` / ``consecutiveLocalOriginFailures`` / ``minHealthPercent``
  -> local-origin ejection and ``common_lb_config.healthy_panic_threshold``;
* ``retryBudget`` -> the DEFAULT circuit breaker's ``retry_budget``;
* ``proxyProtocol`` -> the ``upstream_proxy_protocol`` transport socket wrapping the cluster's own.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2, proxy_protocol_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.v3 import percent_pb2

from ...xds.generate import vocab as c
from .fields_schema import HTTP2_KEEPALIVE_TIMEOUT_S
from .spec import ConnectionPool, LoadBalancer, OutlierDetection, RetryBudget

PROXY_PROTOCOL_SOCKET = "envoy.transport_sockets.upstream_proxy_protocol"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
SLOW_START_AGGRESSION_KEY = "upstream.slow_start.aggression"
_ALPN = {"UPGRADE": ("h2",), "DO_NOT_UPGRADE": ("http/1.1",)}


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def apply_balancer(cluster: cluster_pb2.Cluster, lb: LoadBalancer) -> None:
    """The hash algorithm's sizes and the slow start of ``lb`` (after ``lb_policy`` is set)."""
    ch = lb.consistent_hash
    if ch is not None and ch.maglev:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        if ch.maglev_table_size:  # 0: Envoy's default (65537)
            cluster.maglev_lb_config.table_size.value = ch.maglev_table_size
    elif ch is not None and ch.minimum_ring_size:  # 0: Envoy's default (1024)
        cluster.ring_hash_lb_config.minimum_ring_size.value = ch.minimum_ring_size
    warmup = lb.warmup
    if warmup is None:
        return
    slow = cluster_pb2.Cluster.SlowStartConfig(slow_start_window=c.seconds(warmup.duration))
    if warmup.aggression is not None:
        slow.aggression.default_value = warmup.aggression
        slow.aggression.runtime_key = SLOW_START_AGGRESSION_KEY
    if warmup.minimum_percent is not None:
        slow.min_weight_percent.CopyFrom(percent_pb2.Percent(value=warmup.minimum_percent))
    if cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST:
        cluster.least_request_lb_config.slow_start_config.CopyFrom(slow)
    else:  # ROUND_ROBIN (the schema refuses warmup with any other balancer)
        cluster.round_robin_lb_config.slow_start_config.CopyFrom(slow)


def _http2_options(options: hpo_pb2.HttpProtocolOptions) -> protocol_pb2.Http2ProtocolOptions | None:
    """The HTTP/2 options of whichever upstream protocol choice ``options`` makes (None: HTTP/1.1 only)."""
    which = options.WhichOneof("upstream_protocol_options")
    if which == "auto_config":
        return options.auto_config.http2_protocol_options
    if which == "use_downstream_protocol_config":
        return options.use_downstream_protocol_config.http2_protocol_options
    if which == "explicit_http_config" and options.explicit_http_config.HasField("http2_protocol_options"):
        return options.explicit_http_config.http2_protocol_options
    return None


def _mesh_alpn(cluster: cluster_pb2.Cluster, alpn: tuple[str, ...]) -> None:
    """Offer ``alpn`` (empty: none, Envoy then names the protocol of each connection pool) on a TLS cluster that
    offers ALPN already (the mesh's own hop: the server picks what the client offers, both must agree)."""
    if cluster.transport_socket.name != TLS_SOCKET:
        return
    tls = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(tls)
    if not tls.common_tls_context.alpn_protocols:
        return
    del tls.common_tls_context.alpn_protocols[:]
    tls.common_tls_context.alpn_protocols.extend(alpn)
    cluster.transport_socket.typed_config.CopyFrom(c.pack(tls))


def needs_protocol_options(pool: ConnectionPool) -> bool:
    return (pool.h2_upgrade_policy in _ALPN or pool.use_client_protocol or pool.max_concurrent_streams is not None
            or pool.http2_keepalive_interval is not None)


def apply_protocol(cluster: cluster_pb2.Cluster, options: hpo_pb2.HttpProtocolOptions, pool: ConnectionPool) -> None:
    """``h2UpgradePolicy``, ``useClientProtocol`` and the HTTP/2 settings on ``options`` (the cluster's
    HttpProtocolOptions, edited in place). DEFAULT keeps the cluster's choice: between mesh proxies HTTP/2 when
    both offer it (ALPN), towards a ServiceEntry host its port's protocol."""
    h1 = protocol_pb2.Http1ProtocolOptions()
    h2 = protocol_pb2.Http2ProtocolOptions()
    current = _http2_options(options)
    if current is not None:
        h2.CopyFrom(current)
    if pool.use_client_protocol:
        options.use_downstream_protocol_config.CopyFrom(
            hpo_pb2.HttpProtocolOptions.UseDownstreamHttpConfig(http_protocol_options=h1, http2_protocol_options=h2))
        _mesh_alpn(cluster, ())
    elif pool.h2_upgrade_policy == "UPGRADE":
        options.explicit_http_config.CopyFrom(hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options=h2))
        _mesh_alpn(cluster, _ALPN["UPGRADE"])
    elif pool.h2_upgrade_policy == "DO_NOT_UPGRADE":
        options.explicit_http_config.CopyFrom(hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(http_protocol_options=h1))
        _mesh_alpn(cluster, _ALPN["DO_NOT_UPGRADE"])
    target = _http2_options(options)
    if target is None:  # an HTTP/1.1-only upstream (a ServiceEntry HTTP port): HTTP/2 settings have nothing to set
        return
    if pool.max_concurrent_streams is not None:
        target.max_concurrent_streams.value = pool.max_concurrent_streams
    if pool.http2_keepalive_interval is not None:
        ka = target.connection_keepalive
        ka.interval.CopyFrom(c.seconds(pool.http2_keepalive_interval))
        timeout = pool.http2_keepalive_timeout
        ka.timeout.CopyFrom(c.seconds(timeout if timeout is not None else HTTP2_KEEPALIVE_TIMEOUT_S))


def apply_outlier(cluster: cluster_pb2.Cluster, out: outlier_detection_pb2.OutlierDetection,
                  od: OutlierDetection) -> None:
    """Local-origin ejection on ``out`` and the panic threshold on ``cluster`` (as Istio maps them)."""
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        out.enforcing_local_origin_success_rate.value = 0  # as Istio: only the consecutive count ejects
        if od.consecutive_local_origin_failures is not None:
            n = od.consecutive_local_origin_failures
            out.consecutive_local_origin_failure.CopyFrom(_u32(n))
            out.enforcing_consecutive_local_origin_failure.CopyFrom(_u32(100 if n > 0 else 0))
    if od.min_health_percent is not None:
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=od.min_health_percent))


def default_thresholds(cluster: cluster_pb2.Cluster) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """The cluster's DEFAULT-priority circuit breaker thresholds (added when it has none)."""
    for t in cluster.circuit_breakers.thresholds:
        if t.priority == base_pb2.DEFAULT:
            return t
    return cluster.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)


def apply_retry_budget(cluster: cluster_pb2.Cluster, budget: RetryBudget) -> None:
    rb = default_thresholds(cluster).retry_budget
    rb.SetInParent()  # empty: Envoy's defaults (20%, 3), which are Istio's
    if budget.percent is not None:
        rb.budget_percent.CopyFrom(percent_pb2.Percent(value=budget.percent))
    if budget.min_retry_concurrency is not None:
        rb.min_retry_concurrency.CopyFrom(_u32(budget.min_retry_concurrency))


def apply_proxy_protocol(cluster: cluster_pb2.Cluster, version: str) -> None:
    """Wrap the cluster's transport socket (raw TCP when it has none) in the PROXY protocol socket."""
    if cluster.transport_socket.name == PROXY_PROTOCOL_SOCKET:
        wrapped = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport()
        cluster.transport_socket.typed_config.Unpack(wrapped)
        inner = wrapped.transport_socket
    elif cluster.HasField("transport_socket"):
        inner = cluster.transport_socket
    else:
        inner = c.transport_socket(RAW_BUFFER_SOCKET, raw_buffer_pb2.RawBuffer())
    config = proxy_protocol_pb2.ProxyProtocolConfig(
        version=proxy_protocol_pb2.ProxyProtocolConfig.V2 if version == "V2" else proxy_protocol_pb2.ProxyProtocolConfig.V1)
    wrapper = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport(config=config)
    wrapper.transport_socket.CopyFrom(inner)
    cluster.transport_socket.CopyFrom(c.transport_socket(PROXY_PROTOCOL_SOCKET, wrapper))


__all__ = ["apply_balancer", "apply_protocol", "needs_protocol_options", "apply_outlier", "apply_retry_budget",
           "apply_proxy_protocol", "default_thresholds"]
