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
from ..policies.destination_rule.locality import apply_locality
from ..policies.destination_rule.spec import DestinationRuleSpec, TrafficPolicy, spec_of
from ..snapshot import MeshSnapshot, ProxyInfo
from ..xds.generate import CLUSTER, ENDPOINT
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

    def rule(self, host: str) -> DestinationRuleSpec | None:
        """The typed spec of ``host``'s DestinationRule, if it has one."""
        rule = dr.rule_for(self.snapshot.resources_of(dr.KIND_NAME), host)
        return spec_of(rule) if rule is not None else None

    def policy(self, host: str, subset: str | None) -> TrafficPolicy:
        rule = self.rule(host)
        return rule.effective_policy(subset, self.port(host)) if rule is not None else TrafficPolicy()

    def port(self, host: str) -> int | None:
        """The port a DestinationRule's ``portLevelSettings`` name for ``host`` (its instances' shared port)."""
        return dr.service_port(self.snapshot.catalog, host)

    def existing(self, name: str) -> cluster_pb2.Cluster | None:
        return self._clusters.get(name)

    def ensure(self, source: ServiceInstance, host: str, subset: str | None, datacenter: str | None = None) -> str:
        """Name of the cluster reaching ``host`` (or its ``subset``) as ``source``; added with its endpoints if new.

        Raises :class:`MissingSubset` when ``subset`` is not defined for ``host``.
        """
        rule = self.rule(host)
        labels = None
        if subset is not None:
            found = rule.subset(subset) if rule is not None else None
            if found is None:
                from ..policies.virtual_service.schema import subset_problem

                raise MissingSubset(subset_problem(self.snapshot.resources_of(dr.KIND_NAME), host, subset))
            labels = dict(found.labels)
        policy = rule.effective_policy(subset, self.port(host)) if rule is not None else TrafficPolicy()
        name = (naming.subset_cluster(host, source.service, subset) if subset is not None
                else naming.upstream_cluster(host, source.service))
        if name in self._clusters:
            return name
        cluster = upstream_cluster(self.snapshot, self.proxy, source, Upstream(host, 0, datacenter=datacenter))
        cluster.name = name
        if subset is not None:
            cluster.eds_cluster_config.service_name = naming.subset_endpoints(host, subset, datacenter)
        apply_policy(cluster, policy)
        self._add_cluster(cluster)
        eds = cluster.eds_cluster_config.service_name
        if eds not in self._endpoints:
            cla = (subset_assignment(self.snapshot, host, subset, labels, datacenter) if subset is not None
                   else load_assignment(self.snapshot, host, datacenter))
            apply_locality(self.snapshot, self.proxy, cla, policy)
            self._endpoints.add(eds)
            self.resources[ENDPOINT].append(cla)
            self.resources[ENDPOINT].sort(key=lambda x: x.cluster_name)
        return name

    def _add_cluster(self, cluster: cluster_pb2.Cluster) -> None:
        self._clusters[cluster.name] = cluster
        self.resources[CLUSTER].append(cluster)
        self.resources[CLUSTER].sort(key=lambda x: x.name)


__all__ = ["subset_assignment", "ClusterSet", "MissingSubset"]
