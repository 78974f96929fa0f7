"""DestinationRule ``failover`` -> Envoy: the failover targets' endpoints at lower priorities (pure).

One cluster per (host, subset), as without failover: its ClusterLoadAssignment carries the first target's
endpoints at priority 0 (or at the locality priorities :mod:`.locality` gave them), then each failover
target's healthy endpoints at the next priority, in order. The assignment's overprovisioning factor is
set so high that Envoy keeps all traffic on the best priority while it has any healthy endpoint, and
spills to the next only when none is left, which is Consul's failover rule (a target is used only when
every earlier one has no healthy instance). Health comes from two places: Consul's checks (an instance
whose checks fail leaves the assignment at the next build) and the cluster's outlier detection (an
ejected endpoint counts as unhealthy at once). Both undo themselves, so traffic fails back as soon as
the first target has a healthy instance again.

A target that is another service presents that service's SPIFFE identity: the cluster's upstream TLS
context accepts the targets' identities beside the host's.

A target's instances in other datacenters are reached as the cluster's own are (``routed``: the caller's mesh
gateway mode for the cluster's host, :func:`meshcore.xds.generate.mesh_gateway.rule_routing`): through the
gateways (``local``/``remote``) with the target's own SNI (``<service>.<dc>.internal.meshcore``, or its subset's),
or directly (``none``). A target's gateway endpoint at an address an earlier priority already uses (the same local
gateway, for another SNI) stays: the composer then splits the cluster into an aggregate of clusters that each
repeat no address (:mod:`meshcore.xds.generate.aggregate`), since Envoy keeps one host per address in a cluster.
"""

from __future__ import annotations

from typing import Callable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from ...catalog.model import Upstream
from ...snapshot import MeshSnapshot
from ...xds.generate import ENDPOINT
from ...xds.generate import mesh_gateway as mgw
from ...xds.generate import vocab as c
from ...xds.generate.endpoints import load_assignment
from . import schema as dr
from .spec import DestinationRuleSpec, FailoverTarget

OVERPROVISIONING_FACTOR = 100_000
"""Envoy's overprovisioning factor (percent) on an assignment with failover: a priority keeps all traffic while
any of its endpoints is healthy (the default, 140, spills part of it once fewer than 71% are)."""

RuleOf = Callable[[str], "DestinationRuleSpec | None"]


def target_assignment(snapshot: MeshSnapshot, target: FailoverTarget, rule_of: RuleOf,
                      datacenter: str | None) -> endpoint_pb2.ClusterLoadAssignment | None:
    """The healthy endpoints of one failover target (None when its subset is not defined any more); only those of
    its ``datacenter`` when it names one."""
    full = load_assignment(snapshot, target.host, datacenter)
    if target.datacenter is not None:
        kept = [g for g in full.endpoints if g.locality.region == target.datacenter]
        del full.endpoints[:]
        full.endpoints.extend(kept)
    if target.subset is None:
        return full
    rule = rule_of(target.host)
    found = rule.subset(target.subset) if rule is not None else None
    if found is None:
        return None
    labels = dict(found.labels)
    chosen = {(i.mesh_address, i.mesh_port) for i in snapshot.catalog.healthy(target.host)
              if dr.selects(i.labels, labels)}
    for group in full.endpoints:
        kept = [ep for ep in group.lb_endpoints
                if (ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value)
                in chosen]
        del group.lb_endpoints[:]
        group.lb_endpoints.extend(kept)
    return full


def add_failover(cla: endpoint_pb2.ClusterLoadAssignment, targets: list[endpoint_pb2.ClusterLoadAssignment]) -> None:
    """Append each target's endpoints to ``cla`` at the next priority, in place; priorities are then compacted
    to 0, 1, ... over the non-empty groups (an empty first target makes the first failover priority 0)."""
    level = max((g.priority for g in cla.endpoints), default=-1)
    weighted = any(g.HasField("load_balancing_weight") for g in cla.endpoints)
    for target in targets:
        level += 1
        for group in target.endpoints:
            kept = list(group.lb_endpoints)  # an address met before: xds.generate.aggregate sorts it out
            if not kept:
                continue
            cla.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(
                locality=group.locality, lb_endpoints=kept, priority=level))
            if weighted:  # locality-weighted balancing (distribute): a group without a weight gets no traffic
                cla.endpoints[-1].load_balancing_weight.value = len(kept)
    groups = [g for g in cla.endpoints if g.lb_endpoints]
    compact = {p: i for i, p in enumerate(sorted({g.priority for g in groups}))}
    ordered = []
    for group in groups:
        copy = endpoint_components_pb2.LocalityLbEndpoints()
        copy.CopyFrom(group)
        copy.priority = compact[group.priority]
        ordered.append(copy)
    ordered.sort(key=lambda g: (g.priority, g.locality.region, g.locality.zone))
    del cla.endpoints[:]
    cla.endpoints.extend(ordered)
    cla.policy.overprovisioning_factor.value = OVERPROVISIONING_FACTOR


def accept_failover_identities(snapshot: MeshSnapshot, cluster: cluster_pb2.Cluster,
                               rule: DestinationRuleSpec | None, subset: str | None,
                               routed: tuple[str, str] | None = None, datacenter: str | None = None) -> None:
    """Let ``cluster`` (reaching ``rule``'s host, or its ``subset``) accept the identities of the other services
    it fails over to: its upstream TLS context's SAN matchers get theirs beside the host's. Through gateways
    (``routed``), each target of another datacenter also gets its transport socket match (its SNI)."""
    if routed is not None and rule is not None:
        for t in rule.failover_for(subset):  # a target of one datacenter: only that datacenter's match
            mgw.add_failover_matches(snapshot, cluster, [(t.host, t.subset)], t.datacenter or datacenter, routed[1])
    hosts = sorted({t.host for t in rule.failover_for(subset) if t.host != rule.host}) if rule is not None else []
    if not hosts or not cluster.HasField("transport_socket"):
        return
    tls = tls_pb2.UpstreamTlsContext()
    if not cluster.transport_socket.typed_config.Unpack(tls):
        return
    sans = tls.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    have = {m.matcher.exact for m in sans}
    for host in hosts:
        for sid in c.upstream_spiffe_ids(snapshot, Upstream(host, 0)):
            if sid not in have:
                have.add(sid)
                sans.append(c.uri_san(exact=sid))
    cluster.transport_socket.typed_config.CopyFrom(c.pack(tls))


def apply_failover(snapshot: MeshSnapshot, cla: endpoint_pb2.ClusterLoadAssignment, rule: DestinationRuleSpec | None,
                   subset: str | None, rule_of: RuleOf, datacenter: str | None = None,
                   routed: tuple[str, str] | None = None) -> bool:
    """Give ``cla`` (the endpoints of ``rule``'s host, or of its ``subset``) its failover targets' endpoints at
    lower priorities (their other datacenters' through the gateways when ``routed``); True when there was any
    target."""
    targets = rule.failover_for(subset) if rule is not None else ()
    if not targets:
        return False
    built = []
    for t in targets:
        a = target_assignment(snapshot, t, rule_of, datacenter)
        if a is not None:
            built.append(a if routed is None else mgw.failover_through_gateways(snapshot, a, t.host, t.subset, routed))
    add_failover(cla, built)
    return True


def apply_failover_named(snapshot: MeshSnapshot, resources: dict, eds_name: str, rule: DestinationRuleSpec,
                         rule_of: RuleOf, datacenter: str | None = None, routed: tuple[str, str] | None = None) -> bool:
    """:func:`apply_failover` for the host's own assignment called ``eds_name`` among the built ``resources``."""
    for cla in resources[ENDPOINT]:
        if cla.cluster_name == eds_name:
            return apply_failover(snapshot, cla, rule, None, rule_of, datacenter, routed)
    return False


__all__ = ["OVERPROVISIONING_FACTOR", "apply_failover", "apply_failover_named", "accept_failover_identities", "add_failover", "target_assignment"]
