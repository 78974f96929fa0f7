"""Clusters: the local app behind each inbound listener, and each upstream over mTLS (EDS).

An upstream cluster depends on the calling proxy only through its service and its secrets directory, so
:func:`build_clusters` asks ``shared`` (when given) for it by that key (:func:`keyed_upstream_cluster`):
every replica of a service calling the same host gets the same entry.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from ... import naming
from ...catalog.model import ServiceInstance, Upstream
from ...snapshot import MeshSnapshot, ProxyInfo
from . import vocab as c
from .app_protocol import apply_app_protocol
from .shared import Keyed, SharedResources, shared_or_built

CONNECT_TIMEOUT_S = 5.0

# Outlier detection on every mesh upstream cluster unless a DestinationRule's ``outlierDetection`` replaces it:
# eject an instance after 5 gateway errors in a row (502/503/504 and connect failures, resets and timeouts:
# the instance's proxy or app is down), first for 30 s (longer each time it is ejected again), checked
# every 5 s, at most half of a service's instances at once. Plain 5xx from the app and success-rate
# ejection are counted but not enforced: an app's own 500s say nothing about the instance's health.
OUTLIER_GATEWAY_ERRORS = 5
OUTLIER_INTERVAL_S = 5.0
OUTLIER_BASE_EJECTION_S = 30.0
OUTLIER_MAX_EJECTION_PERCENT = 50

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def mesh_http_protocol_options() -> hpo_pb2.HttpProtocolOptions:
    """The upstream protocol of a mesh HTTP cluster: chosen per connection by ALPN (``auto_config``), so two
    meshcore sidecars multiplex requests over HTTP/2 (fewer connections, no head-of-line wait for a free
    HTTP/1.1 connection, HPACK) while an endpoint that only speaks HTTP/1.1 keeps working."""
    return hpo_pb2.HttpProtocolOptions(auto_config=hpo_pb2.HttpProtocolOptions.AutoHttpConfig(
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def default_outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    """The outlier detection of a mesh upstream cluster without a DestinationRule's (see the constants above)."""
    return outlier_detection_pb2.OutlierDetection(
        consecutive_gateway_failure=_u32(OUTLIER_GATEWAY_ERRORS),
        enforcing_consecutive_gateway_failure=_u32(100),
        enforcing_consecutive_5xx=_u32(0),
        enforcing_success_rate=_u32(0),
        interval=c.seconds(OUTLIER_INTERVAL_S),
        base_ejection_time=c.seconds(OUTLIER_BASE_EJECTION_S),
        max_ejection_percent=_u32(OUTLIER_MAX_EJECTION_PERCENT),
    )


def local_app_cluster(instance: ServiceInstance) -> cluster_pb2.Cluster:
    name = naming.local_app_cluster(instance.id)
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=c.socket_address(instance.local_service_address, instance.port)
        )
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=c.seconds(CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )
    apply_app_protocol(cluster, instance)  # http2 / grpc apps: HTTP/2 to the app
    return cluster


def upstream_cluster(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance, upstream: Upstream) -> cluster_pb2.Cluster:
    """Reach ``upstream`` presenting ``source``'s SVID and accepting only the upstream's own identities."""
    return service_upstream_cluster(snapshot, source.service, upstream.destination_name, upstream.datacenter or "",
                                    proxy.secrets_dir)


def service_upstream_cluster(snapshot: MeshSnapshot, service: str, host: str, datacenter: str,
                             secrets_dir: str) -> cluster_pb2.Cluster:
    """:func:`upstream_cluster` as a pure function of its key: the calling service, the host, its datacenter
    ("" = any) and the calling proxy's secrets directory (all it reads of the caller)."""
    upstream = Upstream(host, 0, datacenter=datacenter or None)
    caller = ProxyInfo(node="", secrets_dir=secrets_dir)
    peers = [c.uri_san(exact=sid) for sid in c.upstream_spiffe_ids(snapshot, upstream)]
    tls = tls_pb2.UpstreamTlsContext(
        sni=upstream.destination_name,
        common_tls_context=c.common_tls(snapshot, caller, service, peers),
    )
    http = c.upstream_protocol(snapshot, upstream) != "tcp"
    if http:
        tls.common_tls_context.alpn_protocols.extend(c.MESH_ALPN)  # as the inbound side offers
    cluster = cluster_pb2.Cluster(
        name=naming.upstream_cluster(upstream.destination_name, service),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=c.ads_source(),
            service_name=naming.upstream_endpoints(upstream.destination_name, upstream.datacenter),
        ),
        connect_timeout=c.seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        transport_socket=c.transport_socket("envoy.transport_sockets.tls", tls),
        outlier_detection=default_outlier_detection(),
    )
    cluster.track_cluster_stats.per_endpoint_stats = True  # which instance answered: the graph's versions (observe/_versions.py)
    if http:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(c.pack(mesh_http_protocol_options()))
    return cluster


def keyed_upstream_cluster(proxy: ProxyInfo, source: ServiceInstance, upstream: Upstream) -> Keyed:
    """The shared-resource key of :func:`upstream_cluster` for these arguments."""
    return Keyed(service_upstream_cluster, (source.service, upstream.destination_name, upstream.datacenter or "",
                                            proxy.secrets_dir))


def build_clusters(snapshot: MeshSnapshot, proxy: ProxyInfo,
                   shared: SharedResources | None = None) -> list[cluster_pb2.Cluster]:
    from . import mesh_gateway  # it builds on this module's upstream cluster

    clusters = {}
    for inst in c.sidecar_instances(snapshot, proxy):
        cl = local_app_cluster(inst)
        clusters[cl.name] = cl
    for src, up in c.outbound_bindings(snapshot, proxy):
        keyed = mesh_gateway.keyed_cluster(snapshot, proxy, src, up) or keyed_upstream_cluster(proxy, src, up)
        cl = shared_or_built(snapshot, keyed, shared)
        assert isinstance(cl, cluster_pb2.Cluster)
        clusters[cl.name] = cl
    clusters.update((cl.name, cl) for cl in mesh_gateway.gateway_clusters(snapshot, proxy))
    return [clusters[k] for k in sorted(clusters)]
