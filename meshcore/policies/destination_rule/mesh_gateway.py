"""DestinationRule subsets at a mesh gateway: one SNI route per subset of its own datacenter's services (pure).

A sidecar that reaches a subset of a service in another datacenter through the gateways names the subset in
its SNI (:func:`meshcore.naming.mesh_gateway_subset_sni`: ``<subset>.<service>.<dc>.internal.meshcore``; the
caller's side is :func:`meshcore.xds.generate.mesh_gateway.route_rule_cluster`). The gateway of ``<dc>``
forwards such a connection, still encrypted, to the healthy instances of ``<service>`` in ``<dc>`` that the
subset's labels select, as the DestinationRule for ``<service>`` **that this gateway's control plane holds**
defines the subset (apply the DestinationRule in every datacenter, as Consul replicates config entries from its
primary datacenter). A subset with no healthy instance in the gateway's datacenter gets no route: the caller's
locality failover has already left that datacenter out. Other datacenters' subset SNIs go on through the
datacenter route (``*.<dc>.internal.meshcore`` matches them too), so only the last gateway needs the rule.
"""

from __future__ import annotations

from ... import naming
from ...catalog.model import ServiceInstance
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import CLUSTER, ENDPOINT, LISTENER
from ...xds.generate import mesh_gateway as mgw
from .schema import KIND_NAME, rule_for, selects
from .spec import spec_of


def subset_routes(snapshot: MeshSnapshot, gateway: ServiceInstance) -> list[tuple[str, str, list[ServiceInstance]]]:
    """``(service, subset, instances)`` for every subset with healthy instances in the gateway's datacenter, sorted."""
    rules = snapshot.resources_of(KIND_NAME)
    out = []
    for host in sorted({spec_of(r).host for r in rules}):
        rule = rule_for(rules, host)
        if rule is None:
            continue
        here = [i for i in snapshot.catalog.healthy(host) if i.kind == "" and i.datacenter == gateway.datacenter]
        if not here:
            continue
        for subset in spec_of(rule).subsets:
            chosen = [i for i in here if selects(i.labels, dict(subset.labels))]
            if chosen:
                out.append((host, subset.name, chosen))
    return out


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    gateways = mgw.local_gateways(snapshot, proxy)
    if not gateways or not snapshot.resources_of(KIND_NAME):
        return
    clusters = {cl.name for cl in resources[CLUSTER]}
    endpoints = {cla.cluster_name for cla in resources[ENDPOINT]}
    for gw in gateways:
        routes = subset_routes(snapshot, gw)
        if not routes:
            continue
        names = {naming.mesh_gateway_listener(gw.id, wan) for wan in (False, True)}
        for listener in resources[LISTENER]:
            if listener.name in names:
                listener.filter_chains.extend(
                    mgw.tcp_chain(f"subset:{host}|{subset}", [naming.mesh_gateway_subset_sni(subset, host, gw.datacenter)],
                                  naming.mesh_gateway_subset_cluster(host, subset, gw.datacenter))
                    for host, subset, _ in routes)
        for host, subset, chosen in routes:
            name = naming.mesh_gateway_subset_cluster(host, subset, gw.datacenter)
            if name not in clusters:
                clusters.add(name)
                resources[CLUSTER].append(mgw.passthrough_cluster(name))
            if name not in endpoints:
                endpoints.add(name)
                resources[ENDPOINT].append(mgw.gateway_assignment(
                    name, [(i.mesh_address, i.mesh_port) for i in chosen], gw.datacenter))
    resources[CLUSTER].sort(key=lambda x: x.name)
    resources[ENDPOINT].sort(key=lambda x: x.cluster_name)


__all__ = ["apply", "subset_routes"]
