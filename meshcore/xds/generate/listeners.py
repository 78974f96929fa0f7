"""Listeners: one mTLS inbound listener per local service, one outbound listener per declared upstream."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...authz.patterns import BASE, DECODE_AND_MERGE_SLASHES, DEFAULT_PATH_NORMALIZATION, MERGE_SLASHES, NONE
from ...catalog.model import ServiceInstance, Upstream
from ...snapshot import MeshSnapshot, ProxyInfo
from . import mesh_gateway
from . import vocab as c
from .policy_filters import inbound_policy_filters, outbound_policy_filters

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
MTLS_CHAIN = "mtls"
PLAINTEXT_CHAIN = "plaintext"


def _stat(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")


_HCM = hcm_pb2.HttpConnectionManager
# Istio's MeshConfig pathNormalization -> (normalize_path, merge_slashes, what to do with %2F and %5C). Istio keeps
# escaped slashes under BASE and MERGE_SLASHES; meshcore rejects them (400): a policy on /admin/x cannot be passed
# with /admin%2Fx, and an app that decodes them never sees a path the policies did not.
PATH_NORMALIZATION_OPTIONS = {
    NONE: (False, False, _HCM.KEEP_UNCHANGED),
    BASE: (True, False, _HCM.REJECT_REQUEST),
    MERGE_SLASHES: (True, True, _HCM.REJECT_REQUEST),
    DECODE_AND_MERGE_SLASHES: (True, True, _HCM.UNESCAPE_AND_FORWARD),
}


def normalize_requests(hcm: hcm_pb2.HttpConnectionManager, path_normalization: str) -> None:
    """What every HTTP connection manager does to a request before any filter sees it: the path normalized per
    ``path_normalization`` (Istio's option names, :data:`PATH_NORMALIZATION_OPTIONS`), and the Host's trailing dot
    stripped (``secret.details.`` is ``secret.details`` to routes and policies; hosts match case-insensitively)."""
    try:
        normalize, merge, escaped = PATH_NORMALIZATION_OPTIONS[path_normalization]
    except KeyError:
        raise ValueError(f"path normalization {path_normalization!r}: use one of "
                         f"{', '.join(PATH_NORMALIZATION_OPTIONS)}") from None
    hcm.normalize_path.CopyFrom(wrappers_pb2.BoolValue(value=normalize))
    hcm.merge_slashes = merge
    hcm.path_with_escaped_slashes_action = escaped
    hcm.strip_trailing_host_dot = True


def http_connection_manager(stat_prefix: str, route_name: str, *, inbound: bool,
                            path_normalization: str = DEFAULT_PATH_NORMALIZATION) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=_stat(stat_prefix),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=c.ads_source(), route_config_name=route_name),
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER, typed_config=c.pack(router_pb2.Router()))],
    )
    normalize_requests(hcm, path_normalization)
    # Constant policy filters (rules and faults come per route over RDS): a policy or fault change never touches
    # the listener, so it applies to the next request on every open connection (see policy_filters).
    router = list(hcm.http_filters)
    del hcm.http_filters[:]
    hcm.http_filters.extend((inbound_policy_filters() if inbound else outbound_policy_filters()) + router)
    if inbound:
        # Tell the app who called: the peer's SPIFFE ID in x-forwarded-client-cert, never a client-supplied one.
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
    return hcm


def _filters(stat_prefix: str, protocol: str, route_name: str, cluster: str, *, inbound: bool,
             path_normalization: str) -> list[c.NetworkFilter]:
    if protocol == "tcp":
        return [c.NetworkFilter(TCP_PROXY, tcp_proxy_pb2.TcpProxy(stat_prefix=_stat(stat_prefix), cluster=cluster))]
    return [c.NetworkFilter(HCM, http_connection_manager(stat_prefix, route_name, inbound=inbound,
                                                         path_normalization=path_normalization))]


def inbound_filters(instance: ServiceInstance,
                    path_normalization: str = DEFAULT_PATH_NORMALIZATION) -> list[c.NetworkFilter]:
    return _filters(
        naming.inbound_listener(instance.id), instance.protocol,
        naming.inbound_route(instance.id), naming.local_app_cluster(instance.id), inbound=True,
        path_normalization=path_normalization,
    )


def inbound_listener(snapshot: MeshSnapshot, proxy: ProxyInfo, instance: ServiceInstance) -> c.ListenerDraft:
    """mTLS only (STRICT); the PeerAuthentication plugin relaxes it per workload and port."""
    tls = c.downstream_mtls(snapshot, proxy, instance)
    chain = c.ChainDraft(listener_components_pb2.FilterChain(
        name=MTLS_CHAIN,
        filter_chain_match=listener_components_pb2.FilterChainMatch(transport_protocol="tls"),
        transport_socket=c.transport_socket("envoy.transport_sockets.tls", tls),
    ), inbound_filters(instance, snapshot.settings.path_normalization))
    return c.ListenerDraft(listener_pb2.Listener(
        name=naming.inbound_listener(instance.id),
        address=c.socket_address(instance.mesh_address, instance.mesh_port),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=c.pack(tls_inspector_pb2.TlsInspector())
            )
        ],
    ), [chain])


def outbound_listener(snapshot: MeshSnapshot, source: ServiceInstance, upstream: Upstream) -> c.ListenerDraft:
    name = naming.outbound_listener(upstream.destination_name, upstream.local_bind_port)
    filters = _filters(
        name, c.upstream_protocol(snapshot, upstream),
        naming.outbound_route(upstream.destination_name, upstream.local_bind_port),
        naming.upstream_cluster(upstream.destination_name, source.service), inbound=False,
        path_normalization=snapshot.settings.path_normalization,
    )
    return c.ListenerDraft(listener_pb2.Listener(
        name=name,
        address=c.socket_address(upstream.local_bind_address, upstream.local_bind_port),
        traffic_direction=base_pb2.OUTBOUND,
    ), [c.ChainDraft(filters=filters)])


def build_listeners(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[c.ListenerDraft]:
    """Every listener of ``proxy`` as a draft (network filter configs still messages; see :mod:`.vocab`)."""
    listeners = [inbound_listener(snapshot, proxy, i) for i in c.sidecar_instances(snapshot, proxy)]
    listeners += [outbound_listener(snapshot, src, up) for src, up in c.outbound_bindings(snapshot, proxy)]
    listeners += mesh_gateway.gateway_listeners(snapshot, proxy)  # a mesh gateway's SNI routing (docs/multi-dc.md)
    return sorted(listeners, key=lambda l: l.name)
