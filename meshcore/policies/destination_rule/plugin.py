"""DestinationRule: traffic policy on each upstream's cluster, and one cluster per subset.

For every upstream a proxy declared whose host has a DestinationRule:

* the upstream's own cluster (``outbound:<host>|<source>``) gets the host's ``trafficPolicy``
  (load balancer, circuit breakers, outlier detection), and its default route the hash policy a
  ``consistentHash`` load balancer needs;
* every subset gets a cluster ``outbound:<host>|<source>|<subset>`` with the subset's policy and its
  own ClusterLoadAssignment ``outbound:<host>|<subset>`` holding only the instances whose labels match,
  so VirtualServices can route to it (and a subset not routed to right now stays warm).
* with locality-aware failover on (``loadBalancer.localityLbSetting``, or ``outlierDetection`` alone,
  as in Istio) each of those assignments ranks its datacenters for this proxy (see
  :mod:`.locality`).
"""

from __future__ import annotations


from ... import naming
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet
from ...xds.generate import vocab as c
from ...xds.generate.mesh_gateway import routing as gateway_routing
from ...xds.generate.vocab import LISTENER, ROUTE
from .clusters import apply_policy, route_hash_policies, tcp_hash_policies
from ..service_entry.plugin import upstream_family
from ..virtual_service.schema import service_for
from .failover import accept_failover_identities, apply_failover_named
from .locality import apply_locality_named
from .locality_weights import weight_cluster
from . import mesh_gateway
from .locality_ports import port_locality_problems
from .schema import KIND_NAME, rule_for
from .spec import TrafficPolicy
from .tcp_options import apply_tcp, destinations, tcp_proxies, tcp_settings
from .tls_origination import mesh_tls

KIND = KIND_NAME


def _default_route_hash(resources: dict, route_name: str, policy: TrafficPolicy) -> None:
    hashes = route_hash_policies(policy)
    if not hashes:
        return
    for rc_ in resources[ROUTE]:
        if rc_.name == route_name:
            for vhost in rc_.virtual_hosts:
                for route in vhost.routes:
                    del route.route.hash_policy[:]
                    route.route.hash_policy.extend(hashes)


def _default_tcp_hash(resources: dict, listener_name: str, policy: TrafficPolicy) -> None:
    hashes = tcp_hash_policies(policy)
    if not hashes:
        return
    for proxy in tcp_proxies(resources[LISTENER], listener_name):
        del proxy.hash_policy[:]
        proxy.hash_policy.extend(hashes)


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    if not snapshot.resources_of(KIND):
        return
    mesh_gateway.apply(snapshot, proxy, resources)  # a mesh gateway's routes to its datacenter's subsets
    clusters = ClusterSet(snapshot, proxy, resources)
    ranked: set[str] = set()
    problems: list[str] = []
    for src, up in c.outbound_bindings(snapshot, proxy):
        host = up.destination_name
        _tcp_listener(snapshot, resources, clusters, src, up, problems)
        rule = clusters.rule(host, src)
        if rule is None:
            continue
        resource = rule_for(snapshot.resources_of(KIND), host, (src.labels, src.namespace))
        if resource is not None:
            problems.extend(p for p in port_locality_problems(snapshot.catalog, resource, host) if p not in problems)
        policy = rule.effective_policy(None, clusters.port(host, src))
        own = clusters.existing(naming.upstream_cluster(host, src.service))
        routed = gateway_routing(snapshot, proxy, up)  # failover targets of other datacenters: as the upstream
        if own is not None:
            apply_policy(own, policy)
            mesh_tls(snapshot, proxy.node, own, host, None, clusters.port(host), (src.labels, src.namespace))
            accept_failover_identities(snapshot, own, rule, None, routed, up.datacenter)
            weight_cluster(snapshot, proxy, own, policy)
        eds = naming.upstream_endpoints(host, up.datacenter)
        if eds not in ranked:  # once per assignment: failover priorities come after the locality ones
            ranked.add(eds)
            apply_locality_named(snapshot, proxy, resources, eds, policy, host)
            apply_failover_named(snapshot, resources, eds, rule, clusters.rule, up.datacenter, routed)
        for subset in rule.subset_names:
            clusters.ensure(src, host, subset, up.datacenter)
        if c.upstream_protocol(snapshot, up) == "tcp":
            _default_tcp_hash(resources, naming.outbound_listener(host, up.local_bind_port), policy)
        else:
            _default_route_hash(resources, naming.outbound_route(host, up.local_bind_port), policy)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)


def _tcp_listener(snapshot: MeshSnapshot, resources: dict, clusters: ClusterSet, src, up, problems: list[str]) -> None:
    """``tcp.idleTimeout`` and ``tunnel`` of the destinations of a TCP upstream on its listener's tcp_proxy."""
    host = up.destination_name
    family = upstream_family(snapshot, host, up.local_bind_port)
    if not ((family in ("tls", "tcp")) if family is not None else c.upstream_protocol(snapshot, up) == "tcp"):
        return
    vs = service_for(snapshot.resources_of("VirtualService"), host)
    policies = [clusters.policy(d, s, src) for d, s in destinations(host, vs)]
    idle, tunnel, problem = tcp_settings(host, policies)
    if problem is not None:
        problems.append(problem)
        return
    if idle is None and tunnel is None:
        return
    for proxy in tcp_proxies(resources[LISTENER], naming.outbound_listener(host, up.local_bind_port)):
        apply_tcp(proxy, idle, tunnel)


__all__ = ["apply"]
