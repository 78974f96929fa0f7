"""A gateway VM as a route destination (pure): Istio's egress-gateway pattern, and a Sidecar's ``egressProxy``.

A VirtualService for the sidecars (``gateways: [mesh, egress-gateway]``) may send a host's traffic to a gateway
service (a Consul service of kind ``ingress-gateway``, e.g. one with meta ``istio: egressgateway`` that a Gateway
selects), as Istio's egress gateway tasks do::

    http:
    - match: [{gateways: [mesh], port: 80}]
      route: [{destination: {host: egress-gateway, subset: api, port: {number: 8443}}}]
    - match: [{gateways: [egress-gateway], port: 8443}]
      route: [{destination: {host: api.example.com, port: {number: 80}}}]

The destination's cluster (``outbound:<gateway>|<caller>[|<subset>]:<port>``) reaches the gateway instances (a
subset's by its labels) at the listener of their Gateway server on ``port`` (its ``bind``, else the instance's
address), not at the Consul registration's port: the gateway listens where its Gateway says. To a TLS server (an
``ISTIO_MUTUAL`` one: ``protocol: HTTPS`` for HTTP routes behind it, ``TLS`` for tcp[]) the connection is the mesh's
mTLS (the caller's SVID, the gateway's identity verified); to a plaintext server (``HTTP``, ``TCP``: Istio's plain
egress gateway task) it is plaintext, and to a ``PASSTHROUGH`` server (Istio's HTTPS egress gateway task, routed by
``tls[]`` rules) the app's own TLS as it is, as in Istio. A server with certificate files of its own cannot be a mesh
caller's destination (refused with the reason). The gateway's
chains are told apart by SNI, so the SNI is the request's own host (Envoy's ``auto_sni``): a server for
``api.example.com`` matches a request for ``api.example.com`` (what Istio's ``egressgateway-for-cnn`` rule writes
as ``tls.sni``). A tcp[] route to a gateway has no request host: no SNI is sent, and the gateway's server must take
any name (``hosts: ["*"]``). The gateway then routes on to the external host by
its bound VirtualService rules, originating plain or TLS per that host's DestinationRule.

``port`` may be left out when the Gateways selecting the service serve one port; a port none serves refuses the
caller's config (it keeps its last good one) with the ports there are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from ... import naming
from ...catalog.definitions import INGRESS_GATEWAY
from ...catalog.model import ServiceInstance, Upstream
from ...errors import MissingSubset, RouteProblem
from ...snapshot import MeshSnapshot
from ...xds.generate import vocab as c
from ...xds.generate.clusters import HTTP_PROTOCOL_OPTIONS, upstream_cluster
from ..destination_rule import schema as dr
from ..destination_rule.clusters import apply_policy
from ..destination_rule.spec import TrafficPolicy
from .schema import KIND_NAME, gateways_for
from .spec import spec_of

if TYPE_CHECKING:
    from ...traffic.clusters import ClusterSet


def is_gateway_service(snapshot: MeshSnapshot, host: str) -> bool:
    """Whether ``host`` names a gateway service: registered, and every instance a gateway (kind ingress-gateway)."""
    instances = snapshot.catalog.instances_of(host)
    return bool(instances) and all(i.kind == INGRESS_GATEWAY for i in instances)


def _listeners(snapshot: MeshSnapshot, instance: ServiceInstance) -> dict[int, str]:
    """The Gateway server ports of one gateway instance: port -> the address its listener binds."""
    out: dict[int, str] = {}
    for gw in gateways_for(snapshot.resources_of(KIND_NAME), instance.labels):
        for server in spec_of(gw).servers:
            out.setdefault(server.port, server.bind or instance.mesh_address or instance.address)
    return out


def gateway_ports(snapshot: MeshSnapshot, host: str) -> list[int]:
    """The ports the Gateways selecting ``host``'s instances serve, sorted."""
    return sorted({p for i in snapshot.catalog.instances_of(host) for p in _listeners(snapshot, i)})


def gateway_cluster(clusters: ClusterSet, source: ServiceInstance, host: str, subset: str | None,
                    port: int | None) -> str:
    """Name of the cluster reaching gateway service ``host`` (its ``subset``) on Gateway server ``port`` as
    ``source``; added when new. Raises :class:`RouteProblem` (no such port, or none named and several),
    :class:`MissingSubset`."""
    snapshot = clusters.snapshot
    ports = gateway_ports(snapshot, host)
    known = ", ".join(map(str, ports)) or "none: no Gateway selects it"
    if port is None and len(ports) == 1:
        port = ports[0]
    if port is None or port not in ports:
        raise RouteProblem(f"destination {host!r} is a gateway, reached on a port of its Gateway servers (its ports: "
                           f"{known}); " + ("name one in destination.port" if port is None else
                                            f"no Gateway selecting it serves port {port}"))
    rule = clusters.rule(host, source)
    labels = None
    if subset is not None:
        found = rule.subset(subset) if rule is not None else None
        if found is None:
            from ..virtual_service.schema import subset_problem

            raise MissingSubset(subset_problem(snapshot.resources_of(dr.KIND_NAME), host, subset))
        labels = dict(found.labels)
    base = naming.subset_cluster(host, source.service, subset) if subset else naming.upstream_cluster(host, source.service)
    name = naming.port_cluster(base, port)
    if clusters.existing(name) is not None:
        return name
    tls = _transport(snapshot, host, port)
    cluster = upstream_cluster(snapshot, clusters.proxy, source, Upstream(host, 0))  # the mesh's mTLS to the gateway
    cluster.name = name
    if not tls:  # plaintext: HTTP/1.1 (no ALPN to choose by); a TCP service's cluster has no HTTP options
        cluster.ClearField("transport_socket")
        if HTTP_PROTOCOL_OPTIONS in cluster.typed_extension_protocol_options:
            cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(hpo_pb2.HttpProtocolOptions(
                explicit_http_config=hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                    http_protocol_options=protocol_pb2.Http1ProtocolOptions())))
    cluster.ClearField("eds_cluster_config")
    cluster.type = cluster_pb2.Cluster.STATIC
    endpoints = [endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
        address=c.socket_address(_listeners(snapshot, i)[port], port)))
        for i in snapshot.catalog.healthy(host) if dr.selects(i.labels, labels) and port in _listeners(snapshot, i)]
    cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)]))
    apply_policy(cluster, rule.effective_policy(subset, port) if rule is not None else TrafficPolicy())
    if tls:
        _auto_sni(cluster)
    clusters._add_cluster(cluster)
    return name


def _transport(snapshot: MeshSnapshot, host: str, port: int) -> bool:
    """Whether callers reach ``host``'s Gateway servers on ``port`` over the mesh's mTLS (they terminate TLS with
    the mesh CA's certificate) or as they are: in plaintext to HTTP and TCP servers (Istio's plain egress gateway
    task), the app's own TLS to PASSTHROUGH servers (Istio's HTTPS egress gateway task: the gateway routes it by its
    SNI). Raises :class:`RouteProblem` for servers a mesh caller cannot speak to (certificate files of their own) and
    for a port mixing PASSTHROUGH servers with terminating ones (one cluster cannot do both)."""
    servers = [server for i in snapshot.catalog.instances_of(host)
               for gw in gateways_for(snapshot.resources_of(KIND_NAME), i.labels)
               for server in spec_of(gw).servers if server.port == port]
    own = [s for s in servers if s.tls is not None and s.tls.certificates]
    passed = [s for s in servers if s.passes_through]
    if own or (passed and len(passed) != len(servers)):
        raise RouteProblem(f"destination {host!r} port {port}: its Gateway servers there "
                           + ("have certificate files of their own" if own else
                              "both pass TLS through and terminate it")
                           + ", and the mesh's callers reach a gateway over the mesh's mTLS (servers with tls.mode "
                           "ISTIO_MUTUAL and no certificate files), in plaintext (HTTP or TCP servers) or with their "
                           "own TLS (PASSTHROUGH servers); give those servers a port of their own")
    return not passed and any(s.speaks_tls for s in servers)


def _auto_sni(cluster: cluster_pb2.Cluster) -> None:
    """The SNI the gateway's chains are matched by: the request's own host (Envoy's ``auto_sni``), not the
    gateway's service name."""
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    context.ClearField("sni")
    cluster.transport_socket.typed_config.Pack(context)
    options = hpo_pb2.HttpProtocolOptions()
    if HTTP_PROTOCOL_OPTIONS in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    options.upstream_http_protocol_options.auto_sni = True
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)


__all__ = ["is_gateway_service", "gateway_ports", "gateway_cluster"]
