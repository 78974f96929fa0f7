"""DestinationRule -> Envoy clusters: traffic policy on a cluster, subset clusters and their endpoints (pure).

:class:`ClusterSet` is what the traffic plugins use on one proxy's build: it finds or adds the
cluster for ``(source service, host, subset)`` (and the ClusterLoadAssignment its EDS names), with
the host's or subset's policy applied, so both DestinationRule and VirtualService see one place
where clusters come from.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.v3 import hash_policy_pb2

from .. import naming
from ..catalog.model import ServiceInstance, Upstream
from ..resources.kinds import destination_rule as dr
from ..resources.model import Resource
from ..snapshot import MeshSnapshot, ProxyInfo
from ..xds.generate import CLUSTER, ENDPOINT
from ..xds.generate import vocab as c
from ..xds.generate.clusters import upstream_cluster
from ..xds.generate.endpoints import load_assignment
from .locality import apply_locality

_SIMPLE = {
    dr.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    dr.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    dr.RANDOM: cluster_pb2.Cluster.RANDOM,
}


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def apply_policy(cluster: cluster_pb2.Cluster, policy: dict) -> None:
    """Set ``policy`` (a DestinationRule ``trafficPolicy``) on ``cluster``; fields the policy leaves out stay.

    * ``loadBalancer.simple`` -> ``lb_policy``; ``consistentHash`` -> ``RING_HASH`` (the hash key goes
      on the routes, see :func:`route_hash_policies`);
    * ``connectionPool`` -> ``connect_timeout`` and the DEFAULT-priority circuit breaker thresholds;
    * ``outlierDetection`` -> ``outlier_detection``, enforced at 100% for the error kinds given (as Istio).
    """
    lb = policy.get("loadBalancer") or {}
    if "simple" in lb:
        cluster.lb_policy = _SIMPLE[lb["simple"]]
    elif "consistentHash" in lb:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH

    pool = policy.get("connectionPool") or {}
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    if "connectTimeout" in tcp:
        cluster.connect_timeout.CopyFrom(c.seconds(dr.seconds(tcp["connectTimeout"])))
    limits = {
        "max_connections": tcp.get("maxConnections"),
        "max_pending_requests": http.get("http1MaxPendingRequests"),
        "max_requests": http.get("http2MaxRequests"),
        "max_retries": http.get("maxRetries"),
    }
    if any(v is not None for v in limits.values()):
        thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
        for field, value in limits.items():
            if value is not None:
                getattr(thresholds, field).CopyFrom(_u32(value))
        del cluster.circuit_breakers.thresholds[:]
        cluster.circuit_breakers.thresholds.append(thresholds)

    od = policy.get("outlierDetection")
    if od:
        out = outlier_detection_pb2.OutlierDetection()
        if "consecutive5xxErrors" in od:
            n = od["consecutive5xxErrors"]
            out.consecutive_5xx.CopyFrom(_u32(n))
            out.enforcing_consecutive_5xx.CopyFrom(_u32(100 if n > 0 else 0))
        if "consecutiveGatewayErrors" in od:
            n = od["consecutiveGatewayErrors"]
            out.consecutive_gateway_failure.CopyFrom(_u32(n))
            out.enforcing_consecutive_gateway_failure.CopyFrom(_u32(100 if n > 0 else 0))
        if "interval" in od:
            out.interval.CopyFrom(c.seconds(dr.seconds(od["interval"])))
        if "baseEjectionTime" in od:
            out.base_ejection_time.CopyFrom(c.seconds(dr.seconds(od["baseEjectionTime"])))
        if "maxEjectionPercent" in od:
            out.max_ejection_percent.CopyFrom(_u32(od["maxEjectionPercent"]))
        cluster.outlier_detection.CopyFrom(out)


def route_hash_policies(policy: dict) -> list[rc.RouteAction.HashPolicy]:
    """The route hash policy a ``consistentHash`` load balancer needs (empty for any other policy)."""
    ch = (policy.get("loadBalancer") or {}).get("consistentHash")
    if not ch:
        return []
    hp = rc.RouteAction.HashPolicy
    if "httpHeaderName" in ch:
        return [hp(header=hp.Header(header_name=ch["httpHeaderName"]))]
    if "httpCookie" in ch:
        cookie = ch["httpCookie"]
        out = hp.Cookie(name=cookie["name"], path=cookie.get("path", ""))
        if "ttl" in cookie:
            out.ttl.CopyFrom(c.seconds(dr.seconds(cookie["ttl"])))
        return [hp(cookie=out)]
    if "httpQueryParameterName" in ch:
        return [hp(query_parameter=hp.QueryParameter(name=ch["httpQueryParameterName"]))]
    if ch.get("useSourceIp"):
        return [hp(connection_properties=hp.ConnectionProperties(source_ip=True))]
    return []


def tcp_hash_policies(policy: dict) -> list[hash_policy_pb2.HashPolicy]:
    """For tcp_proxy: only ``useSourceIp`` means something without HTTP."""
    ch = (policy.get("loadBalancer") or {}).get("consistentHash") or {}
    if ch.get("useSourceIp"):
        return [hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp())]
    return []


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


class MissingSubset(Exception):
    """A route names a subset no DestinationRule defines (message says which and where to add it)."""


class ClusterSet:
    """The clusters and endpoints of one proxy's build, with traffic rules' clusters added on demand."""

    def __init__(self, snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict):
        self.snapshot, self.proxy, self.resources = snapshot, proxy, resources
        self._clusters = {cl.name: cl for cl in resources[CLUSTER]}
        self._endpoints = {cla.cluster_name for cla in resources[ENDPOINT]}

    def rule(self, host: str) -> Resource | None:
        return dr.rule_for(self.snapshot.resources_of(dr.KIND_NAME), host)

    def policy(self, host: str, subset: str | None) -> dict:
        return dr.effective_policy(self.rule(host), subset)

    def existing(self, name: str) -> cluster_pb2.Cluster | None:
        return self._clusters.get(name)

    def ensure(self, source: ServiceInstance, host: str, subset: str | None, datacenter: str | None = None) -> str:
        """Name of the cluster reaching ``host`` (or its ``subset``) as ``source``; added with its endpoints if new.

        Raises :class:`MissingSubset` when ``subset`` is not defined for ``host``.
        """
        rule = self.rule(host)
        labels = None
        if subset is not None:
            spec = dr.subset_of(rule, subset)
            if spec is None:
                from ..resources.kinds.virtual_service import subset_problem

                raise MissingSubset(subset_problem(self.snapshot.resources_of(dr.KIND_NAME), host, subset))
            labels = spec.get("labels") or {}
        name = (naming.subset_cluster(host, source.service, subset) if subset is not None
                else naming.upstream_cluster(host, source.service))
        if name in self._clusters:
            return name
        cluster = upstream_cluster(self.snapshot, self.proxy, source, Upstream(host, 0, datacenter=datacenter))
        cluster.name = name
        if subset is not None:
            cluster.eds_cluster_config.service_name = naming.subset_endpoints(host, subset, datacenter)
        apply_policy(cluster, dr.effective_policy(rule, subset))
        self._add_cluster(cluster)
        eds = cluster.eds_cluster_config.service_name
        if eds not in self._endpoints:
            cla = (subset_assignment(self.snapshot, host, subset, labels, datacenter) if subset is not None
                   else load_assignment(self.snapshot, host, datacenter))
            apply_locality(self.snapshot, self.proxy, cla, dr.effective_policy(rule, subset))
            self._endpoints.add(eds)
            self.resources[ENDPOINT].append(cla)
            self.resources[ENDPOINT].sort(key=lambda x: x.cluster_name)
        return name

    def _add_cluster(self, cluster: cluster_pb2.Cluster) -> None:
        self._clusters[cluster.name] = cluster
        self.resources[CLUSTER].append(cluster)
        self.resources[CLUSTER].sort(key=lambda x: x.name)


__all__ = ["apply_policy", "route_hash_policies", "tcp_hash_policies", "subset_assignment", "ClusterSet",
           "MissingSubset"]
