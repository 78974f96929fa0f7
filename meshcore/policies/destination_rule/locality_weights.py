"""``localityLbSetting.distribute`` -> Envoy locality-weighted load balancing, per caller (pure).

Istio's semantics: the first ``distribute`` entry whose ``from`` matches the caller's own locality decides. Each
``to`` locality gets its weight (a percent of the caller's traffic); a pattern matching several of the upstream's
localities (``dc1/*`` over zones ``a`` and ``b``) splits its weight between them in proportion to their endpoint
counts, rounded up (as Istio). A locality no ``to`` names gets no traffic from that caller (its group is left
out). Patterns are tried most specific first (``dc1/zone-a`` before ``dc1/*`` before ``*``), so ``{dc1/zone-a:
50, dc1/*: 50}`` means "half to zone a, half to dc1's other zones". Everything stays at priority 0: with
``distribute`` there is no locality failover (the two are exclusive, as in Istio).

A remote datacenter reached through mesh gateways is one locality group of gateway endpoints (region = that
datacenter, no zone), so ``dc2/*: 20`` sends 20% to dc2's gateways, which forward to dc2's instances.

The cluster gets ``common_lb_config.locality_weighted_lb_config`` whenever its policy has ``distribute`` (the
cluster stays the same for every caller); a caller that no ``from`` matches gets each locality weighted by its
endpoint count, which balances as if locality weights were off.
"""

from __future__ import annotations

import math
from typing import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate.endpoints import Locality, proxy_locality
from .spec import TrafficPolicy

Weights = tuple[tuple[str, int], ...]


def locality_matches(pattern: str, locality: Locality) -> bool:
    """Whether ``pattern`` (``*``, ``dc``, ``dc/*``, ``dc/zone``, ``dc/zone/*``) covers ``locality``."""
    parts = pattern.split("/")
    if parts[0] == "*":
        return True
    if parts[0] != locality.datacenter:
        return False
    if len(parts) == 1 or parts[1] == "*":
        return True
    return parts[1] == locality.zone


def _specificity(pattern: str) -> int:
    """How many leading segments of ``pattern`` are not wildcards (more is more specific)."""
    n = 0
    for part in pattern.split("/"):
        if part == "*":
            break
        n += 1
    return n


def caller_weights(distribute: Sequence[tuple[str, Weights]], caller: Locality) -> Weights | None:
    """The ``to`` weights of the first ``distribute`` entry whose ``from`` matches ``caller`` (None: no entry)."""
    for src, weights in distribute:
        if locality_matches(src, caller):
            return weights
    return None


def group_weights(localities: Sequence[tuple[Locality, int]], weights: Weights) -> list[int]:
    """The load-balancing weight of each ``(locality, endpoint count)`` under ``weights`` (0: no traffic).

    Most specific patterns claim their localities first; a pattern's weight is split over the localities it
    claims in proportion to their endpoint counts, rounded up."""
    out = [0] * len(localities)
    claimed: set[int] = set()
    ordered = sorted(range(len(weights)), key=lambda i: -_specificity(weights[i][0]))  # stable: given order on ties
    for i in ordered:
        pattern, weight = weights[i]
        mine = [j for j, (loc, _) in enumerate(localities) if j not in claimed and locality_matches(pattern, loc)]
        total = sum(localities[j][1] for j in mine)
        claimed.update(mine)
        for j in mine:
            if total:
                out[j] = max(1, math.ceil(weight * localities[j][1] / total)) if localities[j][1] else 0
    return out


def weigh(cla: endpoint_pb2.ClusterLoadAssignment, caller: Locality | None,
          distribute: Sequence[tuple[str, Weights]]) -> None:
    """Give each locality group of ``cla`` its weight as seen from ``caller``, in place, all at priority 0; groups
    the caller's entry gives no weight are dropped. Without a matching entry each group weighs its endpoint count."""
    weights = caller_weights(distribute, caller) if caller is not None else None
    groups = list(cla.endpoints)
    counts = [(Locality.of_proto(g.locality), len(g.lb_endpoints)) for g in groups]
    values = group_weights(counts, weights) if weights is not None else [n for _, n in counts]
    kept = []
    for group, value in zip(groups, values):
        if value <= 0:
            continue
        group.priority = 0
        group.load_balancing_weight.value = value
        kept.append(group)
    if len(kept) != len(groups):
        del cla.endpoints[:]
        cla.endpoints.extend(kept)


def weight_cluster(snapshot: MeshSnapshot, proxy: ProxyInfo, cluster: cluster_pb2.Cluster | None,
                   policy: TrafficPolicy) -> bool:
    """Turn on Envoy's locality-weighted balancing on ``cluster`` when ``policy`` has ``distribute``; True if so.

    A cluster with inline endpoints (a ServiceEntry host's, whose ``locality`` is ``region/zone/subzone``: the region
    compares with the caller's datacenter, the zone with its zone) has them weighed here for ``proxy``, or ranked
    when ``policy`` turns locality failover on (``failover``, ``failoverPriority`` by the endpoints' ``labels``,
    ``minClusterSize``, outlier detection alone), as a mesh service's; EDS clusters' assignments are weighed and
    ranked by :func:`.locality.apply_locality`."""
    if cluster is None:
        return False
    distribute = policy.locality_distribute()
    if distribute is None:
        if cluster.load_assignment.endpoints and policy.locality_failover() is not None:
            from .locality import apply_locality  # it builds on this module's weights

            apply_locality(snapshot, proxy, cluster.load_assignment, policy, endpoint_labels=_entry_labels(snapshot))
        return False
    cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    if cluster.load_assignment.endpoints:
        weigh(cluster.load_assignment, proxy_locality(snapshot, proxy), distribute)
    return True


def _entry_labels(snapshot: MeshSnapshot) -> dict[tuple[str, int], dict[str, str]]:
    """Every ServiceEntry endpoint's labels by (address, port) on each of its entry's ports."""
    from ..service_entry.spec import spec_of

    out: dict[tuple[str, int], dict[str, str]] = {}
    for entry in snapshot.resources_of("ServiceEntry"):
        spec = spec_of(entry)
        for e in spec.endpoints:
            for port in spec.ports:
                out.setdefault((e.address, e.port_for(port)), dict(e.labels))
    return out


__all__ = ["caller_weights", "group_weights", "locality_matches", "weigh", "weight_cluster"]
