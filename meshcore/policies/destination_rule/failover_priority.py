"""``localityLbSetting.failoverPriority`` -> Envoy endpoint priorities by label, per caller (pure).

Istio's semantics: an ordered list of labels; an endpoint's priority is how many of the **leading** labels it
shares with the calling proxy (all of them: priority 0; none: the lowest). A ``key=value`` entry matches endpoints
whose label has that value, whatever the caller's. Missing labels compare as empty (as Istio's). Priorities are
compacted to 0, 1, ... over the endpoints present, so Envoy keeps traffic on the closest group and spills to the
next as its endpoints fail (health checks, outlier detection).

Istio's topology labels stand for meshcore's locality: ``topology.kubernetes.io/region`` and
``topology.istio.io/network`` are the datacenter (each Consul datacenter is its own network, joined by mesh
gateways), ``topology.kubernetes.io/zone`` the node meta ``zone``. Every other label is a workload label: the
instance's meta, ``tag:<t>`` for its tags and ``app`` (the caller's come from the instances on its node). A
remote datacenter's gateway endpoints carry only their datacenter.

With ``failover`` as well (allowed without the topology labels, as Istio), the label priority comes first and the
locality rank (own zone, own datacenter, ``failover`` targets in order, the rest) orders within it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.endpoints import Locality, failover_targets, locality_rank
from .locality_schema import REGION_LABELS, ZONE_LABELS


def topology_labels(locality: Locality) -> dict[str, str]:
    """Istio's topology labels of a meshcore locality."""
    out = {key: locality.datacenter for key in REGION_LABELS}
    out.update({key: locality.zone for key in ZONE_LABELS})
    return out


def label_rank(caller: Mapping[str, str], endpoint: Mapping[str, str], priority: Sequence[str]) -> int:
    """``len(priority)`` minus the number of leading ``priority`` labels ``endpoint`` shares with ``caller``."""
    matched = 0
    for entry in priority:
        key, sep, value = entry.partition("=")
        want = value if sep else caller.get(key, "")
        if endpoint.get(key, "") != want:
            break
        matched += 1
    return len(priority) - matched


def caller_labels(snapshot: MeshSnapshot, proxy: ProxyInfo, caller: Locality, host: str = "") -> dict[str, str]:
    """The calling proxy's labels: those of its instances that call ``host`` (every instance on its node when no
    ``host`` or none does; the first by id wins a clash), then its locality's topology."""
    callers = {src.id for src, up in c.outbound_bindings(snapshot, proxy) if up.destination_name == host}
    instances = [i for i in c.sidecar_instances(snapshot, proxy) if i.id in callers] or \
        list(c.sidecar_instances(snapshot, proxy))
    out: dict[str, str] = {}
    for inst in sorted(instances, key=lambda i: i.id):
        for key, value in inst.labels.items():
            out.setdefault(key, value)
    out.update(topology_labels(caller))
    return out


def rank_by_labels(cla: endpoint_pb2.ClusterLoadAssignment, caller: Locality, labels: Mapping[str, str],
                   endpoint_labels: Mapping[tuple[str, int], Mapping[str, str]], priority: Sequence[str],
                   failover: Iterable[tuple[str, str]] | None = None) -> None:
    """Split ``cla``'s locality groups by label rank and give each its priority, in place.

    ``endpoint_labels`` maps ``(address, port)`` to an endpoint's workload labels (an endpoint not in it, e.g. a
    mesh gateway, has only its locality's topology labels). With ``failover`` (not None) the locality rank orders
    endpoints of one label rank."""
    targets = failover_targets(caller.datacenter, failover) if failover is not None else ()
    buckets: dict[tuple[int, int, Locality], list[endpoint_components_pb2.LbEndpoint]] = {}
    for group in cla.endpoints:
        loc = Locality.of_proto(group.locality)
        near = locality_rank(caller, loc, targets) if failover is not None else 0
        topo = topology_labels(loc)
        for ep in group.lb_endpoints:
            sa = ep.endpoint.address.socket_address
            own = {**endpoint_labels.get((sa.address, sa.port_value), {}), **topo}
            buckets.setdefault((label_rank(labels, own, priority), near, loc), []).append(ep)
    compact = {rank: i for i, rank in enumerate(sorted({(r, n) for r, n, _ in buckets}))}
    groups = []
    for (rank, near, loc), eps in sorted(buckets.items(), key=lambda kv: (compact[kv[0][:2]], kv[0][2])):
        group = endpoint_components_pb2.LocalityLbEndpoints(locality=loc.proto(), priority=compact[(rank, near)])
        group.lb_endpoints.extend(eps)
        groups.append(group)
    del cla.endpoints[:]
    cla.endpoints.extend(groups)


def apply_failover_priority(snapshot: MeshSnapshot, proxy: ProxyInfo, cla: endpoint_pb2.ClusterLoadAssignment,
                            caller: Locality, host: str, priority: Sequence[str],
                            failover: Sequence[tuple[str, str]],
                            endpoint_labels: Mapping[tuple[str, int], Mapping[str, str]] | None = None) -> None:
    """:func:`rank_by_labels` with the caller's labels and ``host``'s instances' (``failover`` empty: labels only,
    as Istio's ``failoverPriority`` alone); ``endpoint_labels`` given (a ServiceEntry's endpoints): those instead."""
    if endpoint_labels is None:
        endpoint_labels = ({(i.mesh_address, i.mesh_port): i.labels for i in snapshot.catalog.healthy(host)}
                           if host else {})
    rank_by_labels(cla, caller, caller_labels(snapshot, proxy, caller, host), endpoint_labels, priority,
                   failover if failover else None)


__all__ = ["apply_failover_priority", "caller_labels", "label_rank", "rank_by_labels", "topology_labels"]
