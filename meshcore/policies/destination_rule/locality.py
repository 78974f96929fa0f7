"""Locality-aware failover across Consul datacenters: a DestinationRule policy -> endpoint priorities (pure).

Each proxy gets its own ClusterLoadAssignments, so priorities are computed per caller: its own
datacenter (and zone) at priority 0, its ``failover`` datacenters next in order, every other one
after. Envoy sends everything to priority 0 while it has enough healthy endpoints and spills to
the next priority as they fail (health checks remove them from the catalog, outlier detection
ejects them), with the default overprovisioning factor of 1.4.
"""

from __future__ import annotations

from typing import Mapping

from envoy.config.endpoint.v3 import endpoint_pb2

from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import ENDPOINT
from ...xds.generate.endpoints import prioritize, proxy_locality
from .failover_priority import apply_failover_priority
from .locality_weights import weigh
from .spec import TrafficPolicy


def apply_locality(snapshot: MeshSnapshot, proxy: ProxyInfo, cla: endpoint_pb2.ClusterLoadAssignment,
                   policy: TrafficPolicy, host: str = "",
                   endpoint_labels: Mapping[tuple[str, int], Mapping[str, str]] | None = None) -> bool:
    """Rank ``cla``'s localities for ``proxy`` when ``policy`` turns locality failover on; True if it did.
    ``endpoint_labels``: the endpoints' labels for ``failoverPriority`` when they are not ``host``'s instances (a
    ServiceEntry's inline endpoints)."""
    distribute = policy.locality_distribute()
    if distribute is not None:  # weights per locality instead of priorities (.locality_weights)
        if host:
            snapshot.catalog.healthy(host)  # the weights depend on the host's localities, as the ranking below
        weigh(cla, proxy_locality(snapshot, proxy), distribute)
        return True
    failover = policy.locality_failover()
    if failover is None:
        return False
    caller = proxy_locality(snapshot, proxy)
    if caller is None:
        return False
    if host:
        # The ranking depends on which localities the host has: read them through the snapshot, so a change of
        # the host's instances or health rebuilds this proxy (re-ranking), not just re-assembles it with the new
        # shared assignment. Without this, a ranking that moved nothing (one datacenter left, e.g. the own one
        # empty during a failover) left the proxy with unranked groups once the own datacenter recovered
        # (meshcore.controlplane._shared counts only edited copies' reads as the proxy's own).
        snapshot.catalog.healthy(host)
    setting = policy.load_balancer.locality_lb_setting if policy.load_balancer is not None else None
    if setting is not None and setting.min_cluster_size is not None:
        # zoneAwareLbSetting.minClusterSize: too few endpoints in the caller's own datacenter to prefer it; every
        # endpoint shares the load (priority 0 everywhere), as Envoy's zone-aware routing below its minimum.
        own = sum(len(g.lb_endpoints) for g in cla.endpoints if g.locality.region == caller.datacenter)
        if own < setting.min_cluster_size:
            return False
    if setting is not None and setting.failover_priority:  # by labels first (.failover_priority)
        apply_failover_priority(snapshot, proxy, cla, caller, host, setting.failover_priority, failover,
                                endpoint_labels)
        return True
    prioritize(cla, caller, failover)
    return True


def apply_locality_named(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict, eds_name: str,
                         policy: TrafficPolicy, host: str = "") -> bool:
    """:func:`apply_locality` on the built assignment called ``eds_name`` (False when there is none)."""
    for cla in resources[ENDPOINT]:
        if cla.cluster_name == eds_name:
            return apply_locality(snapshot, proxy, cla, policy, host)
    return False


__all__ = ["apply_locality", "apply_locality_named"]
