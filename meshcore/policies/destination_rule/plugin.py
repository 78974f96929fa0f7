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

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet
from ...xds.generate import vocab as c
from ...xds.generate.vocab import LISTENER, ROUTE
from .clusters import apply_policy, route_hash_policies, tcp_hash_policies
from .locality import apply_locality_named
from .schema import KIND_NAME
from .spec import TrafficPolicy

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
    for listener in resources[LISTENER]:
        if listener.name != listener_name:
            continue
        for chain in listener.filter_chains:
            for f in chain.filters:
                if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
                    del f.config.hash_policy[:]
                    f.config.hash_policy.extend(hashes)


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    if not snapshot.resources_of(KIND):
        return
    clusters = ClusterSet(snapshot, proxy, resources)
    for src, up in c.outbound_bindings(snapshot, proxy):
        host = up.destination_name
        rule = clusters.rule(host)
        if rule is None:
            continue
        policy = rule.effective_policy(None, clusters.port(host))
        own = clusters.existing(naming.upstream_cluster(host, src.service))
        if own is not None:
            apply_policy(own, policy)
        apply_locality_named(snapshot, proxy, resources, naming.upstream_endpoints(host, up.datacenter), policy)
        for subset in rule.subset_names:
            clusters.ensure(src, host, subset, up.datacenter)
        if c.upstream_protocol(snapshot, up) == "tcp":
            _default_tcp_hash(resources, naming.outbound_listener(host, up.local_bind_port), policy)
        else:
            _default_route_hash(resources, naming.outbound_route(host, up.local_bind_port), policy)


__all__ = ["apply"]
