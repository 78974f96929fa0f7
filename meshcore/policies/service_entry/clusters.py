"""ServiceEntry -> Envoy clusters (pure): the endpoints of a host outside the mesh, resolved by Envoy.

``resolution: STATIC`` is a STATIC cluster of the endpoints' IPs; ``DNS`` a STRICT_DNS cluster (every address of
every endpoint name, or of the host itself when the entry has no endpoints); ``DNS_ROUND_ROBIN`` a LOGICAL_DNS
cluster (one name, connections spread over its addresses as DNS answers them). The endpoints are inline
(``load_assignment``): there is no catalog behind them, so no EDS. No mesh mTLS: the app speaks to the outside
service in plaintext or with its own TLS (passed through). Each endpoint keeps its ``locality``
(``region/zone/subzone``) and ``weight``; a subset keeps the endpoints whose labels it selects.
"""

from __future__ import annotations

from typing import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from google.protobuf import wrappers_pb2

from ...catalog.model import ServiceInstance
from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.clusters import CONNECT_TIMEOUT_S, HTTP_PROTOCOL_OPTIONS
from .schema import KIND_NAME, entries_by_host, entry_for
from .spec import DNS, DNS_ROUND_ROBIN, STATIC, EntryPort, ServiceEntrySpec, spec_of

_TYPES = {STATIC: cluster_pb2.Cluster.STATIC, DNS: cluster_pb2.Cluster.STRICT_DNS,
          DNS_ROUND_ROBIN: cluster_pb2.Cluster.LOGICAL_DNS}
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC"})


def host_index(snapshot: MeshSnapshot) -> dict[str, Resource]:
    """Every ServiceEntry host of ``snapshot`` -> the ServiceEntry declaring it."""
    return entries_by_host(snapshot.resources_of(KIND_NAME))


def entry_of(snapshot: MeshSnapshot, host: str) -> ServiceEntrySpec | None:
    """The typed spec of the ServiceEntry declaring ``host``, if any."""
    if "." not in host:  # Consul service names have no dot: no ServiceEntry can declare them
        return None
    entry = entry_for(snapshot.resources_of(KIND_NAME), host)
    return spec_of(entry) if entry is not None else None


def upstream_port(entry: ServiceEntrySpec, local_bind_port: int) -> EntryPort:
    """The port an upstream naming a ServiceEntry host reaches: the entry's port with the number the upstream binds
    locally, else the entry's first port."""
    return entry.port(local_bind_port) or entry.ports[0]


def _locality(value: str) -> base_pb2.Locality:
    parts = (value.split("/") + ["", "", ""])[:3] if value else ["", "", ""]
    return base_pb2.Locality(region=parts[0], zone=parts[1], sub_zone=parts[2])


def load_assignment(entry: ServiceEntrySpec, host: str, port: EntryPort, name: str,
                    labels: Mapping[str, str] | None = None) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of ``host`` on ``port`` (those ``labels`` select), grouped by locality in written order."""
    endpoints = [(e.address, e.port_for(port), e.locality, e.weight) for e in entry.endpoints if e.selected_by(labels)]
    if not entry.endpoints and not labels:
        endpoints = [(host, port.target_port or port.number, "", 0)]
    groups: dict[str, list[endpoint_components_pb2.LbEndpoint]] = {}
    for address, number, locality, weight in endpoints:
        lb = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(address, number)))
        if weight:
            lb.load_balancing_weight.CopyFrom(wrappers_pb2.UInt32Value(value=weight))
        groups.setdefault(locality, []).append(lb)
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for locality, lbs in groups.items():
        out.endpoints.add(locality=_locality(locality), lb_endpoints=lbs)
    return out


def external_cluster(entry: ServiceEntrySpec, host: str, port: EntryPort, name: str,
                     labels: Mapping[str, str] | None = None) -> cluster_pb2.Cluster:
    """The cluster ``name`` reaching ``host`` on ``port`` (only the endpoints ``labels`` select, for a subset)."""
    assignment = load_assignment(entry, host, port, name, labels)
    count = sum(len(g.lb_endpoints) for g in assignment.endpoints)
    kind = _TYPES[entry.resolution]
    if count == 0 or (kind == cluster_pb2.Cluster.LOGICAL_DNS and count != 1):
        kind = cluster_pb2.Cluster.STATIC  # a subset that selects nothing: no endpoint, nothing to resolve
    cluster = cluster_pb2.Cluster(
        name=name,
        type=kind,
        connect_timeout=c.seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        load_assignment=assignment,
    )
    if kind != cluster_pb2.Cluster.STATIC:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if port.protocol in HTTP2_PROTOCOLS:
        options = hpo_pb2.HttpProtocolOptions(explicit_http_config=hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(c.pack(options))
    return cluster




def originating_cluster(snapshot: MeshSnapshot, resources: dict, entry: ServiceEntrySpec, host: str, port: EntryPort,
                        name: str, subset: str | None = None, labels: Mapping[str, str] | None = None,
                        workload: tuple[Mapping[str, str], str] | None = None) -> cluster_pb2.Cluster:
    """:func:`external_cluster` with the TLS its DestinationRule has the sidecar originate on ``port`` (for
    ``subset``, or the host), and the SDS secrets of that TLS's files added to ``resources`` (see
    :mod:`meshcore.policies.destination_rule.tls_origination`). The rule is the calling ``workload``'s (labels,
    namespace: a rule whose ``workloadSelector`` selects it, else the host's rule without one), as Istio's."""
    from ..destination_rule.tls_origination import originate, rule_of

    cluster = external_cluster(entry, host, port, name, labels)
    originate(resources, cluster, rule_of(snapshot, host, workload), host, subset, port.number,
              http2=port.protocol in HTTP2_PROTOCOLS)
    return cluster


def source_entry_port(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance, host: str) -> int | None:
    """The number of the ServiceEntry port by which ``source`` reaches ``host`` (its upstream's, see
    :func:`upstream_port`; the entry's first port without one: a gateway); None for a mesh service."""
    entry = entry_of(snapshot, host)
    if entry is None:
        return None
    bind = next((up.local_bind_port for src, up in c.outbound_bindings(snapshot, proxy)
                 if src.service == source.service and up.destination_name == host), 0)
    return upstream_port(entry, bind).number


def external_upstream_cluster(snapshot: MeshSnapshot, proxy: ProxyInfo, source: ServiceInstance, host: str, name: str,
                              labels: Mapping[str, str] | None, subset: str | None = None,
                              resources: dict | None = None) -> cluster_pb2.Cluster | None:
    """The cluster ``name`` by which ``source`` reaches ServiceEntry host ``host`` (``subset``'s, selecting
    ``labels``), on the port of ``source``'s upstream naming it (:func:`upstream_port`; the entry's first port
    without one), originating TLS as its DestinationRule says (secrets added to ``resources``); None when no
    ServiceEntry declares ``host`` (a mesh service)."""
    entry = entry_of(snapshot, host)
    if entry is None:
        return None
    bind = next((up.local_bind_port for src, up in c.outbound_bindings(snapshot, proxy)
                 if src.service == source.service and up.destination_name == host), 0)
    return originating_cluster(snapshot, resources if resources is not None else {c.SECRET: []}, entry, host,
                               upstream_port(entry, bind), name, subset, labels, (source.labels, source.namespace))


__all__ = ["host_index", "entry_of", "upstream_port", "source_entry_port", "load_assignment", "external_cluster", "originating_cluster",
           "external_upstream_cluster"]
