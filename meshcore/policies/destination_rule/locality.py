"""Locality-aware failover across Consul datacenters: a DestinationRule policy -> endpoint priorities (pure).

Each proxy gets its own ClusterLoadAssignments, so priorities are computed per caller: its own
datacenter (and zone) at priority 0, its ``failover`` datacenters next in order, every other one
after. Envoy sends everything to priority 0 while it has enough healthy endpoints and spills to
the next priority as they fail (health checks remove them from the catalog, outlier detection
ejects them), with the default overprovisioning factor of 1.4.
"""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import ENDPOINT
from ...xds.generate.endpoints import prioritize, proxy_locality
from .spec import TrafficPolicy


def apply_locality(snapshot: MeshSnapshot, proxy: ProxyInfo, cla: endpoint_pb2.ClusterLoadAssignment,
                   policy: TrafficPolicy) -> bool:
    """Rank ``cla``'s localities for ``proxy`` when ``policy`` turns locality failover on; True if it did."""
    failover = policy.locality_failover()
    if failover is None:
        return False
    caller = proxy_locality(snapshot, proxy)
    if caller is None:
        return False
    prioritize(cla, caller, failover)
    return True


def apply_locality_named(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict, eds_name: str,
                         policy: TrafficPolicy) -> bool:
    """:func:`apply_locality` on the built assignment called ``eds_name`` (False when there is none)."""
    for cla in resources[ENDPOINT]:
        if cla.cluster_name == eds_name:
            return apply_locality(snapshot, proxy, cla, policy)
    return False


__all__ = ["apply_locality", "apply_locality_named"]
