"""``destination.port.number`` of a VirtualService destination: which cluster it means (pure).

meshcore's port model: a caller reaches an upstream on its own listener (the upstream's ``local_bind_port``); a
Consul service's instances each register one port (the app's, what ``ports`` in an AuthorizationPolicy and
``portLevelSettings`` name), and are reached through their sidecar's mesh port; a ServiceEntry host has the entry's
``ports``. A destination port therefore chooses:

* for a Consul service, the instances registered on that port: the upstream's usual cluster when every instance
  is (the common case: a port written for Istio compatibility changes nothing), else a cluster of the instances on
  that port only (``<cluster>:<port>``, its own ClusterLoadAssignment, same TLS and policy). A port no instance
  registers refuses the caller's config, as a missing subset does;
* for a ServiceEntry host, the entry's port of that number: the upstream's usual cluster when it is the port the
  upstream binds to (its default), else a cluster of the endpoints on that port (``<cluster>:<port>``). A port the
  entry does not declare refuses the config.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ... import naming
from ...catalog.model import ServiceInstance
from ...errors import MissingSubset, RouteProblem
from ...snapshot import MeshSnapshot
from ...traffic.clusters import ClusterSet
from ...xds.generate import vocab as c
from ...xds.generate.vocab import ENDPOINT
from ..destination_rule.clusters import apply_policy
from ..destination_rule.locality_weights import weight_cluster
from ..destination_rule.spec import TrafficPolicy
from ..gateway.egress import gateway_cluster, is_gateway_service
from ..service_entry.clusters import entry_of, originating_cluster, upstream_port
from .schema import subset_problem


def host_ports(snapshot: MeshSnapshot, host: str, local_bind_port: int) -> frozenset[int]:
    """The port of ``host`` an upstream bound on ``local_bind_port`` reaches (what Istio's match ``port`` names on a
    sidecar, the service port): a ServiceEntry host's port for that binding, a Consul service's instances' ports."""
    entry = entry_of(snapshot, host)
    if entry is not None:
        return frozenset({upstream_port(entry, local_bind_port).number})
    return frozenset(i.port for i in snapshot.catalog.instances_of(host))


def destination_policy(clusters: ClusterSet, host: str, subset: str | None, port: int | None,
                       source: ServiceInstance | None = None) -> TrafficPolicy:
    """The traffic policy of the cluster :func:`port_cluster` gives (``port`` None: the usual one) as ``source``
    sees it (a DestinationRule's workloadSelector): a ServiceEntry port's own ``portLevelSettings`` apply to its
    port cluster; a Consul service's port cluster keeps the host's."""
    if port is None or entry_of(clusters.snapshot, host) is None:
        return clusters.policy(host, subset, source)
    rule = clusters.rule(host, source)
    return rule.effective_policy(subset, port) if rule is not None else TrafficPolicy()


def _base_name(host: str, source: ServiceInstance, subset: str | None) -> str:
    return (naming.subset_cluster(host, source.service, subset) if subset is not None
            else naming.upstream_cluster(host, source.service))


def port_cluster(clusters: ClusterSet, source: ServiceInstance, host: str, subset: str | None, port: int,
                 datacenter: str | None = None) -> str:
    """Name of the cluster reaching ``host`` (its ``subset``) on ``port`` as ``source``; added when new (see the
    module docstring). Raises :class:`RouteProblem` for a port the host lacks, :class:`MissingSubset`."""
    snapshot = clusters.snapshot
    entry = entry_of(snapshot, host)
    if entry is not None:
        chosen = entry.port(port)
        if chosen is None:
            known = ", ".join(str(p.number) for p in entry.ports)
            raise RouteProblem(f"destination port {port} of host {host!r}: its ServiceEntry declares no such port "
                               f"(its ports: {known}); name one of them, or leave the port out")
        bind = next((up.local_bind_port for src, up in c.outbound_bindings(snapshot, clusters.proxy)
                     if src.service == source.service and up.destination_name == host), 0)
        if upstream_port(entry, bind).number == port:
            return clusters.ensure(source, host, subset, datacenter)
        name = naming.port_cluster(_base_name(host, source, subset), port)
        if clusters.existing(name) is None:
            rule = clusters.rule(host, source)
            labels = None
            if subset is not None:
                found = rule.subset(subset) if rule is not None else None
                if found is None:
                    raise MissingSubset(subset_problem(snapshot.resources_of("DestinationRule"), host, subset))
                labels = dict(found.labels)
            cluster = originating_cluster(snapshot, clusters.resources, entry, host, chosen, name, subset, labels,
                                          (source.labels, source.namespace))
            apply_policy(cluster, destination_policy(clusters, host, subset, port, source))
            weight_cluster(snapshot, clusters.proxy, cluster, destination_policy(clusters, host, subset, port, source))
            clusters._add_cluster(cluster)
        return name
    if is_gateway_service(snapshot, host):  # a gateway VM: its Gateway server's port (egress gateways)
        return gateway_cluster(clusters, source, host, subset, port)
    ports = sorted({i.port for i in snapshot.catalog.instances_of(host)})
    if not ports or ports == [port]:
        return clusters.ensure(source, host, subset, datacenter)
    if port not in ports:
        raise RouteProblem(f"destination port {port} of host {host!r}: no instance of it is registered on that port "
                           f"(its instances' ports: {', '.join(map(str, ports))}); name one of them, or leave the "
                           "port out")
    base_name = clusters.ensure(source, host, subset, datacenter)
    name = naming.port_cluster(base_name, port)
    if clusters.existing(name) is not None:
        return name
    base = clusters.existing(base_name)
    assert base is not None  # ensure just added it
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(base)
    cluster.name = name
    eds = base.eds_cluster_config.service_name
    cluster.eds_cluster_config.service_name = port_eds = naming.port_cluster(eds, port)
    clusters._add_cluster(cluster)
    endpoints = clusters.resources[ENDPOINT]
    if not any(cla.cluster_name == port_eds for cla in endpoints):
        endpoints.append(_port_assignment(clusters, host, port, eds, port_eds))
        endpoints.sort(key=lambda x: x.cluster_name)
    return name


def _port_assignment(clusters: ClusterSet, host: str, port: int, eds: str, name: str
                     ) -> endpoint_pb2.ClusterLoadAssignment:
    """The assignment ``eds`` (as built for this proxy: ranked, failover priorities) without the endpoints of
    ``host``'s instances registered on another port."""
    others = {(i.mesh_address, i.mesh_port) for i in clusters.snapshot.catalog.instances_of(host) if i.port != port}
    base = next((cla for cla in clusters.resources[ENDPOINT] if cla.cluster_name == eds), None)
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if base is None:
        return out
    if base.HasField("policy"):
        out.policy.CopyFrom(base.policy)
    for group in base.endpoints:
        kept = [ep for ep in group.lb_endpoints
                if (ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value)
                not in others]
        if kept:
            narrowed = endpoint_components_pb2.LocalityLbEndpoints()
            narrowed.CopyFrom(group)  # locality, priority, weight as they are (set or not)
            del narrowed.lb_endpoints[:]
            narrowed.lb_endpoints.extend(kept)
            out.endpoints.append(narrowed)
    return out


__all__ = ["port_cluster", "host_ports", "destination_policy"]
