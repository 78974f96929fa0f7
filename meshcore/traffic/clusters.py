"""DestinationRule -> Envoy clusters: traffic policy on a cluster, subset clusters and their endpoints (pure).

:class:`ClusterSet` is what the traffic plugins use on one proxy's build: it finds or adds the
cluster for ``(source service, host, subset)`` (and the ClusterLoadAssignment its EDS names), with
the host's or subset's policy applied, so both DestinationRule and VirtualService see one place
where clusters come from.
"""

from __future__ import annotations


from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from .. import naming
from ..catalog.model import ServiceInstance, Upstream
from ..errors import MissingSubset
from ..policies.destination_rule import schema as dr
from ..policies.destination_rule.clusters import apply_policy
from ..policies.destination_rule.failover import accept_failover_identities, apply_failover
from ..policies.destination_rule.locality import apply_locality
from ..policies.destination_rule.locality_weights import weight_cluster
from ..policies.destination_rule.spec import DestinationRuleSpec, TrafficPolicy, spec_of
from ..policies.destination_rule.tls_origination import mesh_tls
from ..policies.gateway.egress import gateway_cluster, is_gateway_service
from ..policies.service_entry.clusters import external_upstream_cluster, source_entry_port
from ..snapshot import MeshSnapshot, ProxyInfo
from ..xds.generate import CLUSTER, ENDPOINT, mesh_gateway
from ..xds.generate.clusters import upstream_cluster
from ..xds.generate.endpoints import load_assignment

def subset_assignment(snapshot: MeshSnapshot, host: str, subset: str, labels: dict | None,
                      datacenter: str | None) -> endpoint_pb2.ClusterLoadAssignment:
    """The host's assignment (same shape as the builder's) keeping only instances the subset selects."""
    full = load_assignment(snapshot, host, datacenter)
    chosen = {(i.mesh_address, i.mesh_port) for i in snapshot.catalog.healthy(host) if dr.selects(i.labels, labels)}
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=naming.subset_endpoints(host, subset, datacenter))
    for locality in full.endpoints:
        kept = [ep for ep in locality.lb_endpoints
                if (ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value) in chosen]
        if kept:
            out.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(locality=locality.locality, lb_endpoints=kept))
    return out




class ClusterSet:
    """The clusters and endpoints of one proxy's build, with traffic rules' clusters added on demand."""

    def __init__(self, snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict):
        self.snapshot, self.proxy, self.resources = snapshot, proxy, resources
        self._clusters = {cl.name: cl for cl in resources[CLUSTER]}
        self._endpoints = {cla.cluster_name for cla in resources[ENDPOINT]}
        self._entry_ports: dict[tuple[str, str], int | None] = {}

    def rule(self, host: str, source: ServiceInstance | None = None) -> DestinationRuleSpec | None:
        """The typed spec of ``host``'s DestinationRule as ``source`` sees it (its workloadSelector), if any."""
        workload = (source.labels, source.namespace) if source is not None else None
        rule = dr.rule_for(self.snapshot.resources_of(dr.KIND_NAME), host, workload)
        return spec_of(rule) if rule is not None else None

    def policy(self, host: str, subset: str | None, source: ServiceInstance | None = None) -> TrafficPolicy:
        rule = self.rule(host, source)
        return rule.effective_policy(subset, self.port(host, source)) if rule is not None else TrafficPolicy()

    def port(self, host: str, source: ServiceInstance | None = None) -> int | None:
        """The port a DestinationRule's ``portLevelSettings`` name for ``host``: its instances' shared port, or the
        ServiceEntry port ``source`` reaches the host on (its upstream's)."""
        if source is not None and "." in host:  # a ServiceEntry host (Consul service names have no dot)
            key = (source.service, host)
            if key not in self._entry_ports:  # the proxy's upstreams, scanned once per source and host
                self._entry_ports[key] = source_entry_port(self.snapshot, self.proxy, source, host)
            if self._entry_ports[key] is not None:
                return self._entry_ports[key]
        return dr.service_port(self.snapshot.catalog, host)

    def existing(self, name: str) -> cluster_pb2.Cluster | None:
        return self._clusters.get(name)

    def ensure(self, source: ServiceInstance, host: str, subset: str | None, datacenter: str | None = None) -> str:
        """Name of the cluster reaching ``host`` (or its ``subset``) as ``source``; added with its endpoints if new.

        Raises :class:`MissingSubset` when ``subset`` is not defined for ``host``.
        """
        rule = self.rule(host, source)
        labels = None
        if subset is not None:
            found = rule.subset(subset) if rule is not None else None
            if found is None:
                from ..policies.virtual_service.schema import subset_problem

                raise MissingSubset(subset_problem(self.snapshot.resources_of(dr.KIND_NAME), host, subset))
            labels = dict(found.labels)
        policy = rule.effective_policy(subset, self.port(host, source)) if rule is not None else TrafficPolicy()
        name = (naming.subset_cluster(host, source.service, subset) if subset is not None
                else naming.upstream_cluster(host, source.service))
        if name in self._clusters:
            return name
        if is_gateway_service(self.snapshot, host):  # a gateway VM (egress gateways): its Gateway server's port
            return gateway_cluster(self, source, host, subset, None)
        external = external_upstream_cluster(self.snapshot, self.proxy, source, host, name, labels, subset, self.resources)
        if external is not None:  # a ServiceEntry host: its own endpoints, inline (no EDS)
            apply_policy(external, policy)
            weight_cluster(self.snapshot, self.proxy, external, policy)
            self._add_cluster(external)
            return name
        cluster = upstream_cluster(self.snapshot, self.proxy, source, Upstream(host, 0, datacenter=datacenter))
        cluster.name = name
        if subset is not None:
            cluster.eds_cluster_config.service_name = naming.subset_endpoints(host, subset, datacenter)
        mesh_gateway.route_rule_cluster(self.snapshot, self.proxy, source, cluster, host, subset, datacenter)
        routed = mesh_gateway.rule_routing(self.snapshot, self.proxy, source, host, datacenter)
        apply_policy(cluster, policy)
        mesh_tls(self.snapshot, self.proxy.node, cluster, host, subset, self.port(host),
                 (source.labels, source.namespace))
        accept_failover_identities(self.snapshot, cluster, rule, subset, routed, datacenter)
        weight_cluster(self.snapshot, self.proxy, cluster, policy)
        self._add_cluster(cluster)
        eds = cluster.eds_cluster_config.service_name
        if eds not in self._endpoints:
            cla = (subset_assignment(self.snapshot, host, subset, labels, datacenter) if subset is not None
                   else load_assignment(self.snapshot, host, datacenter))
            cla = mesh_gateway.route_rule_assignment(self.snapshot, self.proxy, source, cla, host, datacenter)
            apply_locality(self.snapshot, self.proxy, cla, policy, host)
            apply_failover(self.snapshot, cla, rule, subset, self.rule, datacenter, routed)
            self._endpoints.add(eds)
            self.resources[ENDPOINT].append(cla)
            self.resources[ENDPOINT].sort(key=lambda x: x.cluster_name)
        return name

    def _add_cluster(self, cluster: cluster_pb2.Cluster) -> None:
        self._clusters[cluster.name] = cluster
        self.resources[CLUSTER].append(cluster)
        self.resources[CLUSTER].sort(key=lambda x: x.name)


__all__ = ["subset_assignment", "ClusterSet", "MissingSubset"]
