"""Mesh gateways: SNI routing between datacenters without terminating mTLS, and sidecars that use them (pure).

A **mesh gateway** is a proxy of its own (catalog kind ``mesh-gateway``, Consul's ``ServiceKind``, whatever the
service's name: :data:`~meshcore.naming.MESH_GATEWAY_SERVICE` is only Consul's default one), run by the agent on a
gateway VM. Its listener (on its LAN
address; also on its WAN address when its service meta :data:`BIND_WAN_META` is ``true``) reads the TLS ClientHello's server name
(``tls_inspector``) and forwards the still-encrypted connection (``tcp_proxy``):

* ``<service>.<own dc>.internal.meshcore`` -> the healthy instances of that service in its own datacenter
  (their mesh addresses: the callee's sidecar terminates the caller's mTLS, so identities stay end to end);
* ``*.<other dc>.internal.meshcore`` -> the healthy mesh gateways of that datacenter (their WAN addresses).

Nothing else is accepted (no default filter chain), and no chain has a transport socket: the gateway never
holds a key and never sees plaintext.

A **sidecar** reaches an upstream's instances in another datacenter per the upstream's mesh gateway mode
(``Upstream.mesh_gateway``: Consul's ``MeshGateway.Mode`` of the upstream, else of the sidecar's proxy):

* ``none`` (or unset): directly, at each instance's mesh address (what meshcore did before gateways);
* ``local``: through the mesh gateways of the caller's own datacenter (LAN addresses);
* ``remote``: straight to the mesh gateways of the instances' datacenter (WAN addresses).

Through a gateway, each remote datacenter becomes one locality group (region = that datacenter) whose endpoints
are gateways; the group keeps its place in the locality priorities (DestinationRule ``localityLbSetting``), so
cross-datacenter failover works as before. Those endpoints carry ``envoy.transport_socket_match``
metadata ``{"mesh-gateway-dc": <dc>}``, and the cluster one transport socket match per remote datacenter: the
same mTLS context (the caller's SVID, the callee's SPIFFE IDs) with the SNI naming service and datacenter. A
datacenter with no healthy gateway to go through is left out (never reached directly behind the operator's
back). Instances of the caller's own datacenter are always reached directly.
"""

from __future__ import annotations

from typing import Callable

from google.protobuf import struct_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from ... import naming
from ...catalog.model import MESH_GATEWAY, ServiceInstance, Upstream
from ...snapshot import MeshSnapshot, ProxyInfo
from . import vocab as c
from .clusters import CONNECT_TIMEOUT_S, default_outlier_detection, service_upstream_cluster
from .endpoints import keyed_load_assignment, load_assignment, proxy_locality
from .shared import Keyed

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # Envoy's endpoint metadata filter for the matches
MATCH_KEY = "mesh-gateway-dc"
SNI_KEY = "mesh-gateway-sni"  # a failover target's gateway endpoints: their own SNI (another service or subset)
ROUTED_MODES = ("local", "remote")
# Service meta of a gateway that also listens on its WAN address (Consul's proxy config key of the same name).
# Off by default, as in Consul: a WAN address is usually a public one forwarded (NAT) to the LAN listener, and
# one Envoy cannot bind there.
BIND_WAN_META = "envoy_mesh_gateway_bind_tagged_addresses"


def _stat(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")


# --- what the catalog says about gateways -------------------------------------------------------------------

def all_gateways(snapshot: MeshSnapshot) -> list[ServiceInstance]:
    """The healthy mesh gateways of every datacenter: the instances of kind ``mesh-gateway`` of any service."""
    catalog = snapshot.catalog
    return [i for s in catalog.services_of_kind(MESH_GATEWAY) for i in catalog.healthy(s) if i.kind == MESH_GATEWAY]


def gateways_in(snapshot: MeshSnapshot, datacenter: str) -> tuple[ServiceInstance, ...]:
    """The healthy mesh gateways of ``datacenter`` (instances of kind ``mesh-gateway``, whatever their service)."""
    return tuple(i for i in all_gateways(snapshot) if i.datacenter == datacenter)


def local_gateways(snapshot: MeshSnapshot, proxy: ProxyInfo) -> tuple[ServiceInstance, ...]:
    """The mesh gateways this proxy is (registered on its node), whatever their service name."""
    return tuple(i for i in c.local_instances(snapshot, proxy) if i.kind == MESH_GATEWAY)


def routing(snapshot: MeshSnapshot, proxy: ProxyInfo, upstream: Upstream) -> tuple[str, str] | None:
    """``(mode, caller datacenter)`` when ``upstream`` goes through gateways, None when it goes direct."""
    if upstream.mesh_gateway not in ROUTED_MODES:
        return None
    caller = proxy_locality(snapshot, proxy)
    return None if caller is None else (upstream.mesh_gateway, caller.datacenter)


def _remote_datacenters(snapshot: MeshSnapshot, host: str, datacenter: str, caller_dc: str) -> list[str]:
    found = {i.datacenter for i in snapshot.catalog.instances_of(host)} - {caller_dc}
    return sorted(dc for dc in found if not datacenter or dc == datacenter)


# --- the sidecar's side: clusters with a transport socket match per remote datacenter ------------------------

def _foreign_ids(snapshot: MeshSnapshot, host: str, dc: str) -> list[str]:
    """The SPIFFE IDs of ``host``'s instances in ``dc`` when any is of another trust domain (else none)."""
    insts = [i for i in snapshot.catalog.instances_of(host) if i.datacenter == dc]
    if not any(i.trust_domain and i.trust_domain != snapshot.trust_domain for i in insts):
        return []
    return sorted({naming.workload_spiffe_id(i.trust_domain or snapshot.trust_domain, i.namespace, i.service_account)
                   for i in insts})


def add_gateway_matches(snapshot: MeshSnapshot, cluster: cluster_pb2.Cluster, host: str, datacenter: str,
                        caller_dc: str, subset: str | None = None) -> None:
    """One transport socket match on ``cluster`` per datacenter other than ``caller_dc`` that has instances of
    ``host``: the cluster's own mTLS context with the SNI the gateways route (naming ``subset`` if given)."""
    base = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(base)  # a copy to derive new contexts from; the original stays
    for dc in _remote_datacenters(snapshot, host, datacenter, caller_dc):
        tls = tls_pb2.UpstreamTlsContext()
        tls.CopyFrom(base)
        tls.sni = (naming.mesh_gateway_sni(host, dc) if subset is None
                   else naming.mesh_gateway_subset_sni(subset, host, dc))
        foreign = _foreign_ids(snapshot, host, dc)
        if foreign:  # that datacenter's SVIDs are of its own trust domain: check the callee's SPIFFE IDs in it
            sans = tls.common_tls_context.combined_validation_context.default_validation_context
            del sans.match_typed_subject_alt_names[:]
            sans.match_typed_subject_alt_names.extend(c.uri_san(exact=i) for i in foreign)
        match = struct_pb2.Struct()
        match.update({MATCH_KEY: dc})
        cluster.transport_socket_matches.add(name=f"mesh-gateway-{dc}", match=match,
                                             transport_socket=c.transport_socket("envoy.transport_sockets.tls", tls))


def gateway_upstream_cluster(snapshot: MeshSnapshot, service: str, host: str, datacenter: str, secrets_dir: str,
                             caller_dc: str) -> cluster_pb2.Cluster:
    """:func:`~.clusters.service_upstream_cluster`, plus :func:`add_gateway_matches`."""
    cluster = service_upstream_cluster(snapshot, service, host, datacenter, secrets_dir)
    add_gateway_matches(snapshot, cluster, host, datacenter, caller_dc)
    return cluster


def keyed_cluster(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance, upstream: Upstream) -> Keyed | None:
    """The shared-resource key of a gateway-routed upstream cluster, None when ``upstream`` goes direct."""
    routed = routing(snapshot, proxy, upstream)
    if routed is None:
        return None
    return Keyed(gateway_upstream_cluster, (source.service, upstream.destination_name, upstream.datacenter or "",
                                            proxy.secrets_dir, routed[1]))


# --- the sidecar's side: remote datacenters' endpoints are gateways ------------------------------------------

def _gateway_endpoint(address: str, port: int, dc: str, tag: dict[str, str] | None = None
                      ) -> endpoint_components_pb2.LbEndpoint:
    meta = struct_pb2.Struct()
    meta.update(tag or {MATCH_KEY: dc})
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(address, port)),
        health_status=health_check_pb2.HEALTHY,
        metadata=base_pb2.Metadata(filter_metadata={TRANSPORT_SOCKET_MATCH: meta}),
    )


def gateway_load_assignment(snapshot: MeshSnapshot, host: str, datacenter: str | None, caller_dc: str,
                            mode: str) -> endpoint_pb2.ClusterLoadAssignment:
    """:func:`~.endpoints.load_assignment` as seen from ``caller_dc`` with gateway mode ``mode``: the own
    datacenter's groups unchanged, every other datacenter one group of gateways (see the module docstring)."""
    return through_gateways(snapshot, load_assignment(snapshot, host, datacenter), caller_dc, mode)


def through_gateways(snapshot: MeshSnapshot, direct: endpoint_pb2.ClusterLoadAssignment, caller_dc: str,
                     mode: str, sni_of: Callable[[str], str] | None = None) -> endpoint_pb2.ClusterLoadAssignment:
    """``direct`` (an assignment of mesh addresses, any selection of a host's instances) as seen from
    ``caller_dc`` with gateway mode ``mode``: every other datacenter's group (with endpoints) replaced by its
    gateways. Their endpoints select the cluster's transport socket match of their datacenter, or, with
    ``sni_of`` (datacenter -> SNI: a failover target's), the match of that SNI (:func:`add_failover_matches`)."""
    local_gws = gateways_in(snapshot, caller_dc) if mode == "local" else ()
    groups: list[endpoint_components_pb2.LocalityLbEndpoints] = []
    remote: list[str] = []
    for group in direct.endpoints:
        if group.locality.region == caller_dc:
            groups.append(group)
        elif group.lb_endpoints and group.locality.region not in remote:
            remote.append(group.locality.region)
    for dc in sorted(remote):
        tag = {SNI_KEY: sni_of(dc)} if sni_of is not None else None
        if mode == "local":
            eps = [_gateway_endpoint(g.mesh_address, g.mesh_port, dc, tag) for g in local_gws]
        else:
            eps = [_gateway_endpoint(g.wan_address or g.mesh_address, g.wan_port or g.mesh_port, dc, tag)
                   for g in gateways_in(snapshot, dc)]
        if eps:
            groups.append(endpoint_components_pb2.LocalityLbEndpoints(locality=base_pb2.Locality(region=dc),
                                                                      lb_endpoints=eps))
    groups.sort(key=lambda g: (g.locality.region, g.locality.zone))
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=direct.cluster_name, endpoints=groups)


def _sni(host: str, subset: str | None, dc: str) -> str:
    return naming.mesh_gateway_sni(host, dc) if subset is None else naming.mesh_gateway_subset_sni(subset, host, dc)


def failover_through_gateways(snapshot: MeshSnapshot, direct: endpoint_pb2.ClusterLoadAssignment, host: str,
                              subset: str | None, routed: tuple[str, str]) -> endpoint_pb2.ClusterLoadAssignment:
    """A failover target's assignment (``host``, or its ``subset``: :func:`~meshcore.policies.destination_rule.
    failover.target_assignment`) through the gateways as the cluster it fails over for goes (``routed``: its
    ``(mode, caller datacenter)``): its other datacenters' groups become gateways, with that target's SNI."""
    mode, caller_dc = routed
    return through_gateways(snapshot, direct, caller_dc, mode, lambda dc: _sni(host, subset, dc))


def add_failover_matches(snapshot: MeshSnapshot, cluster: cluster_pb2.Cluster, targets: list[tuple[str, str | None]],
                         datacenter: str | None, caller_dc: str) -> None:
    """One transport socket match on ``cluster`` per failover target (``(host, subset)``) and other datacenter
    with instances of it: the cluster's mTLS context with the target's SNI, checking the target's SPIFFE IDs
    (:func:`failover_through_gateways` tags its gateway endpoints with that SNI)."""
    if not cluster.HasField("transport_socket"):
        return
    base = tls_pb2.UpstreamTlsContext()
    if not cluster.transport_socket.typed_config.Unpack(base):
        return
    have = {m.name for m in cluster.transport_socket_matches}
    for host, subset in targets:
        for dc in _remote_datacenters(snapshot, host, datacenter or "", caller_dc):
            sni = _sni(host, subset, dc)
            if f"mesh-gateway-{sni}" in have:
                continue
            have.add(f"mesh-gateway-{sni}")
            tls = tls_pb2.UpstreamTlsContext()
            tls.CopyFrom(base)
            tls.sni = sni
            sans = tls.common_tls_context.combined_validation_context.default_validation_context
            del sans.match_typed_subject_alt_names[:]
            ids = _foreign_ids(snapshot, host, dc) or c.upstream_spiffe_ids(snapshot, Upstream(host, 0))
            sans.match_typed_subject_alt_names.extend(c.uri_san(exact=i) for i in ids)
            match = struct_pb2.Struct()
            match.update({SNI_KEY: sni})
            cluster.transport_socket_matches.add(name=f"mesh-gateway-{sni}", match=match,
                                                 transport_socket=c.transport_socket("envoy.transport_sockets.tls", tls))


def endpoint_keys(snapshot: MeshSnapshot, proxy: ProxyInfo, wanted: list[tuple[str, str]]) -> list[Keyed]:
    """The shared-resource key of each ``(host, datacenter)`` assignment this proxy reaches ("" = any datacenter):
    through gateways when an upstream of the proxy to it asks for them, else the plain, shared one."""
    routed: dict[tuple[str, str], tuple[str, str]] = {}
    for _, up in c.outbound_bindings(snapshot, proxy):
        if up.mesh_gateway in ROUTED_MODES:
            how = routing(snapshot, proxy, up)
            if how is not None:
                routed.setdefault((up.destination_name, up.datacenter or ""), how)
    out = []
    for host, dc in wanted:
        how = routed.get((host, dc))
        out.append(keyed_load_assignment(host, dc or None) if how is None
                   else Keyed(gateway_load_assignment, (host, dc or None, how[1], how[0])))
    return out


# --- the sidecar's side: clusters the traffic rules add (DestinationRule subsets) ----------------------------

def _upstream_to(source: ServiceInstance, host: str, datacenter: str | None) -> Upstream | None:
    """``source``'s upstream to ``host`` (in ``datacenter``, else any of its upstreams to ``host``)."""
    named = [u for u in source.upstreams if u.destination_name == host]
    return next((u for u in named if (u.datacenter or None) == (datacenter or None)), named[0] if named else None)


def host_mode(source: ServiceInstance, host: str) -> str:
    """The mesh gateway mode of ``source``'s calls to ``host`` when ``host`` is none of its upstreams (a
    VirtualService route's other host): what the config entries decide for it
    (:attr:`~meshcore.catalog.model.ServiceInstance.mesh_gateway_defaults`: an ``Overrides`` entry, the caller's
    proxy, service-defaults and proxy-defaults, the host's own service-defaults, in Consul's order), else the
    sidecar's own proxy-wide mode (registered on its upstreams with scope ``proxy``)."""
    defaults = source.mesh_gateway_defaults
    if defaults:
        found = dict(defaults)
        return found.get(host, found.get("", ""))
    return next((u.mesh_gateway for u in source.upstreams if u.mesh_gateway_scope == "proxy"), "")


def rule_routing(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance, host: str,
                 datacenter: str | None) -> tuple[str, str] | None:
    """``(mode, caller datacenter)`` when a cluster a traffic rule adds to ``host`` for ``source`` goes through
    gateways: as ``source``'s upstream to ``host`` does, or, when ``host`` is none of its upstreams, as
    :func:`host_mode` says (None: direct)."""
    up = _upstream_to(source, host, datacenter)
    if up is None:
        up = Upstream(host, 0, datacenter=datacenter, mesh_gateway=host_mode(source, host))
    return routing(snapshot, proxy, up)


def route_rule_cluster(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance,
                       cluster: cluster_pb2.Cluster, host: str, subset: str | None, datacenter: str | None) -> None:
    """Hook for :class:`meshcore.traffic.clusters.ClusterSet`: the SNI matches of a gateway-routed rule cluster
    (a subset's SNI names the subset, so the remote gateway routes to its instances only)."""
    routed = rule_routing(snapshot, proxy, source, host, datacenter)
    if routed is not None:
        add_gateway_matches(snapshot, cluster, host, datacenter or "", routed[1], subset)


def route_rule_assignment(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance,
                          cla: endpoint_pb2.ClusterLoadAssignment, host: str,
                          datacenter: str | None) -> endpoint_pb2.ClusterLoadAssignment:
    """Hook for :class:`meshcore.traffic.clusters.ClusterSet`: a rule cluster's assignment (a subset's
    instances) through the gateways when ``source``'s upstream to ``host`` goes through them; a datacenter with
    none of the subset's instances has no group, so locality failover moves per subset."""
    routed = rule_routing(snapshot, proxy, source, host, datacenter)
    return cla if routed is None else through_gateways(snapshot, cla, routed[1], routed[0])


# --- the gateway's own configuration -------------------------------------------------------------------------

def tcp_chain(name: str, server_names: list[str], cluster: str) -> c.ChainDraft:
    return c.ChainDraft(listener_components_pb2.FilterChain(
        name=name,
        filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=server_names,
                                                                    transport_protocol="tls"),
    ), [c.NetworkFilter(TCP_PROXY, tcp_proxy_pb2.TcpProxy(stat_prefix=_stat(cluster), cluster=cluster))])


def _routes(snapshot: MeshSnapshot, gateway: ServiceInstance) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(service, sni, cluster)`` of every mesh service with healthy instances in the gateway's datacenter, and
    the other datacenters with healthy gateways, both sorted."""
    dc = gateway.datacenter
    services = []
    for name in snapshot.catalog.service_names():
        if any(i.kind == "" and i.datacenter == dc for i in snapshot.catalog.healthy(name)):
            services.append((name, naming.mesh_gateway_sni(name, dc), naming.mesh_gateway_service_cluster(name, dc)))
    others = sorted({g.datacenter for g in all_gateways(snapshot) if g.datacenter != dc})
    return services, others


def _gateway_chains(services: list[tuple[str, str, str]], others: list[str]) -> list[c.ChainDraft]:
    """Fresh chains for one listener (plugins edit filter configs in place: no two listeners share one)."""
    return ([tcp_chain(f"service:{s}", [sni], cluster) for s, sni, cluster in services]
            + [tcp_chain(f"datacenter:{dc}", [naming.mesh_gateway_datacenter_sni(dc)],
                          naming.mesh_gateway_datacenter_cluster(dc)) for dc in others])


def gateway_listeners(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[c.ListenerDraft]:
    """Each local mesh gateway's SNI-routing listener(s): LAN address, and WAN address when asked to bind it."""
    out = []
    for gw in local_gateways(snapshot, proxy):
        services, others = _routes(snapshot, gw)


        binds = [(gw.mesh_address, gw.mesh_port, False)]
        wan_differs = gw.wan_address and (gw.wan_address, gw.wan_port) != (gw.mesh_address, gw.mesh_port)
        if wan_differs and gw.meta_dict.get(BIND_WAN_META, "").lower() == "true":
            binds.append((gw.wan_address, gw.wan_port, True))
        for address, port, wan in binds:
            out.append(c.ListenerDraft(listener_pb2.Listener(
                name=naming.mesh_gateway_listener(gw.id, wan),
                address=c.socket_address(address, port),
                traffic_direction=base_pb2.INBOUND,
                listener_filters=[listener_components_pb2.ListenerFilter(
                    name=TLS_INSPECTOR, typed_config=c.pack(tls_inspector_pb2.TlsInspector()))],
            ), _gateway_chains(services, others)))
    return out


def cluster_stat_name(name: str) -> str:
    """The ``alt_stat_name`` of a gateway cluster: its name without dots, which Envoy's tag extraction would cut
    the cluster's name at (``mesh_gateway:service:api.dc2|v2`` -> ``mesh_gateway_service_api|dc2|v2``; service
    and datacenter names have no dots, so the ``|`` parts are service, datacenter, subset: what
    :func:`meshcore.observe._proxy_stats.gateway_route` reads)."""
    return name.replace(":", "_").replace(".", "|")


def passthrough_cluster(name: str) -> cluster_pb2.Cluster:
    """A plain TCP cluster (no transport socket: the bytes are the callers' TLS, forwarded as they are)."""
    return cluster_pb2.Cluster(
        name=name,
        alt_stat_name=cluster_stat_name(name),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=c.ads_source(), service_name=name),
        connect_timeout=c.seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        outlier_detection=default_outlier_detection(),
    )


def gateway_clusters(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[cluster_pb2.Cluster]:
    names: set[str] = set()
    for gw in local_gateways(snapshot, proxy):
        services, others = _routes(snapshot, gw)
        names.update(cluster for _, _, cluster in services)
        names.update(naming.mesh_gateway_datacenter_cluster(dc) for dc in others)
    return [passthrough_cluster(n) for n in sorted(names)]


def gateway_assignment(name: str, endpoints: list[tuple[str, int]], region: str) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(locality=base_pb2.Locality(region=region), lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(a, p)),
                health_status=health_check_pb2.HEALTHY) for a, p in endpoints])])


def gateway_endpoints(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for gw in local_gateways(snapshot, proxy):
        services, others = _routes(snapshot, gw)
        for service, _, cluster in services:
            insts = [i for i in snapshot.catalog.healthy(service) if i.kind == "" and i.datacenter == gw.datacenter]
            out[cluster] = gateway_assignment(cluster, [(i.mesh_address, i.mesh_port) for i in insts], gw.datacenter)
        for dc in others:
            cluster = naming.mesh_gateway_datacenter_cluster(dc)
            out[cluster] = gateway_assignment(cluster, [(g.wan_address or g.mesh_address, g.wan_port or g.mesh_port)
                                                 for g in gateways_in(snapshot, dc)], dc)
    return [out[k] for k in sorted(out)]


__all__ = [
    "BIND_WAN_META", "MATCH_KEY", "add_failover_matches", "add_gateway_matches", "all_gateways", "cluster_stat_name",
    "failover_through_gateways", "SNI_KEY", "gateway_assignment", "gateway_clusters", "gateway_endpoints",
    "gateway_listeners", "gateway_load_assignment", "gateway_upstream_cluster", "gateways_in", "host_mode", "keyed_cluster",
    "endpoint_keys", "local_gateways", "passthrough_cluster", "route_rule_assignment", "route_rule_cluster",
    "routing", "rule_routing", "tcp_chain", "through_gateways",
]
