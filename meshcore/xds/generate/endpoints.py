"""Endpoints: the healthy instances of every upstream this proxy reaches (each one's mesh address).

Every endpoint carries its locality: ``region`` is the instance's Consul datacenter and ``zone``
its node's ``zone`` meta (empty when the node has none). Priorities are all 0 here; locality-aware
failover (DestinationRule ``localityLbSetting``) ranks the localities per calling proxy with
:func:`prioritize`, which works on any assignment built from this module's shape.

An assignment is a pure function of its host and datacenter (:func:`load_assignment`), the same for every
caller, so :func:`build_endpoints` asks ``shared`` (when given) for it by that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ... import naming
from ...catalog.model import ServiceInstance
from ...snapshot import MeshSnapshot, ProxyInfo
from . import vocab as c
from .shared import Keyed, SharedResources, shared_or_built

ZONE_META = "zone"


@dataclass(frozen=True, order=True)
class Locality:
    """Where a workload runs: its Consul datacenter (Envoy ``region``) and optional zone (node meta ``zone``)."""

    datacenter: str
    zone: str = ""

    def proto(self) -> base_pb2.Locality:
        return base_pb2.Locality(region=self.datacenter, zone=self.zone)

    @classmethod
    def of_proto(cls, locality: base_pb2.Locality) -> "Locality":
        return cls(locality.region, locality.zone)


def instance_locality(snapshot: MeshSnapshot, inst: ServiceInstance) -> Locality:
    node = snapshot.catalog.node(inst.node)
    zone = dict(node.meta).get(ZONE_META, "") if node is not None else ""
    return Locality(inst.datacenter, zone)


def proxy_locality(snapshot: MeshSnapshot, proxy: ProxyInfo) -> Locality | None:
    """The calling proxy's locality: its catalog node's datacenter and zone, else its local instances' datacenter.

    None when the catalog knows nothing of the proxy's node (locality-aware balancing then stays off).
    """
    node = snapshot.catalog.node(proxy.node)
    if node is not None:
        return Locality(node.datacenter, dict(node.meta).get(ZONE_META, ""))
    local = c.local_instances(snapshot, proxy)
    return instance_locality(snapshot, local[0]) if local else None


def load_assignment(snapshot: MeshSnapshot, upstream: str, datacenter: str | None) -> endpoint_pb2.ClusterLoadAssignment:
    """Healthy instances of ``upstream`` (only ``datacenter``'s when given), one group per locality, all priority 0."""
    by_locality: dict[Locality, list] = {}
    for inst in snapshot.catalog.healthy(upstream):
        if datacenter and inst.datacenter != datacenter:
            continue
        by_locality.setdefault(instance_locality(snapshot, inst), []).append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(inst.mesh_address, inst.mesh_port)),
                health_status=health_check_pb2.HEALTHY,
            )
        )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=naming.upstream_endpoints(upstream, datacenter),
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(locality=loc.proto(), lb_endpoints=eps)
            for loc, eps in sorted(by_locality.items())
        ],
    )


def locality_rank(caller: Locality, target: Locality, failover_to: Sequence[str]) -> int:
    """How far ``target`` is from ``caller`` (lower is preferred; not yet compacted into priorities).

    0 same datacenter and zone (or no zones known), 1 same datacenter in another zone, then the
    caller's failover datacenters in their order (2, 3, ...), then every other datacenter.
    """
    if target.datacenter == caller.datacenter:
        return 0 if not caller.zone or not target.zone or target.zone == caller.zone else 1
    if target.datacenter in failover_to:
        return 2 + list(failover_to).index(target.datacenter)
    return 2 + len(failover_to)


def failover_targets(caller_datacenter: str, failover: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The ``to`` datacenters of the ``(from, to)`` failover pairs whose ``from`` is the caller's, in order."""
    out: list[str] = []
    for src, dst in failover:
        if src == caller_datacenter and dst != caller_datacenter and dst not in out:
            out.append(dst)
    return tuple(out)


def prioritize(cla: endpoint_pb2.ClusterLoadAssignment, caller: Locality,
               failover: Iterable[tuple[str, str]] = ()) -> None:
    """Give each locality of ``cla`` its priority as seen from ``caller``, in place.

    Ranks come from :func:`locality_rank` and are compacted to 0, 1, 2, ... over the localities
    present (Envoy spills to priority N+1 only when N lacks healthy capacity, so a gap would mean
    nothing; with the local datacenter empty, the first failover target becomes priority 0).
    Groups are reordered by (priority, locality) so the output stays deterministic.
    """
    targets = failover_targets(caller.datacenter, failover)
    groups = list(cla.endpoints)
    ranks = [locality_rank(caller, Locality.of_proto(g.locality), targets) for g in groups]
    compact = {rank: i for i, rank in enumerate(sorted(set(ranks)))}
    ordered = []
    for group, rank in zip(groups, ranks):
        copy = endpoint_components_pb2.LocalityLbEndpoints()
        copy.CopyFrom(group)
        copy.priority = compact[rank]
        ordered.append(copy)
    ordered.sort(key=lambda g: (g.priority, g.locality.region, g.locality.zone))
    del cla.endpoints[:]
    cla.endpoints.extend(ordered)


def keyed_load_assignment(upstream: str, datacenter: str | None) -> Keyed:
    """The shared-resource key of :func:`load_assignment` for these arguments."""
    return Keyed(load_assignment, (upstream, datacenter or None))


def build_endpoints(snapshot: MeshSnapshot, proxy: ProxyInfo,
                    shared: SharedResources | None = None) -> list[endpoint_pb2.ClusterLoadAssignment]:
    wanted = sorted({(up.destination_name, up.datacenter or "") for _, up in c.outbound_bindings(snapshot, proxy)})
    out = []
    from . import mesh_gateway  # it builds on this module's assignments

    for keyed in mesh_gateway.endpoint_keys(snapshot, proxy, wanted):
        cla = shared_or_built(snapshot, keyed, shared)
        assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
        out.append(cla)
    return out + mesh_gateway.gateway_endpoints(snapshot, proxy)


__all__ = ["Locality", "ZONE_META", "instance_locality", "proxy_locality", "load_assignment", "locality_rank",
           "failover_targets", "prioritize", "build_endpoints", "keyed_load_assignment"]
