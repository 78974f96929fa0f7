"""One Envoy host per address: priorities that share an address become the children of an aggregate cluster (pure).

Envoy keys the hosts of an EDS cluster by address: when one ClusterLoadAssignment names an address twice, it keeps
the first endpoint and drops the others, whatever their priority, locality or metadata. meshcore writes such
assignments where several targets are reached through one mesh gateway, each with its own SNI (the endpoint's
transport socket match): a failover target of another datacenter behind the same local gateway as an earlier
priority (``api`` in dc1 and dc2, failing over to ``backup`` in dc2: gw1 with ``api.dc2...`` at priority 1 and
gw1 with ``backup.dc2...`` at priority 2), or, in mode ``local``, two other datacenters ranked one after the other.

:func:`split_shared_addresses` runs after every policy plugin (:func:`meshcore.compose.shape_proxy`). For each
assignment whose priorities repeat an address it cuts the priorities into runs that repeat none (in order), and
turns every EDS cluster of that assignment into an ``envoy.clusters.aggregate`` cluster of the same name over one
child per run: a copy of the original cluster (TLS, transport socket matches, outlier detection, circuit breakers
and load balancing are the child's) named ``<name>~<n>``, whose assignment ``<assignment>~<n>`` holds that run's
priorities from 0. The aggregate cluster tries its children in order and their priorities in order, which is the
original priority order, so traffic spills exactly as it did, through the right SNI at every level. The children
keep the original cluster's stat name (``alt_stat_name``): its request counters count every request of the
aggregate, as the service graph and the dashboards read them.

An address repeated within one priority (two datacenters at the same rank through one gateway: no locality
failover between them) cannot be told apart this way; the first endpoint is kept, as Envoy would. One repeated at a
later priority with the same metadata (the same SNI) is dropped: the earlier priority reaches it already.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2

from .vocab import CLUSTER, ENDPOINT, pack

AGGREGATE_CLUSTER = "envoy.clusters.aggregate"
CHILD_SEPARATOR = "~"


def _address(ep: endpoint_components_pb2.LbEndpoint) -> tuple[str, int]:
    sa = ep.endpoint.address.socket_address
    return sa.address, sa.port_value


def _runs(cla: endpoint_pb2.ClusterLoadAssignment) -> list[list[int]] | None:
    """The priorities of ``cla`` cut into runs in which no address repeats; None when one run holds them all.

    First, in place: an endpoint whose address an earlier priority already has with the same metadata (the same
    SNI: nothing new to reach) is dropped, and so is a repeat within one priority (Envoy would keep the first);
    groups left empty go, and priorities are compacted to 0, 1, ... An address repeated with other metadata (another
    SNI through the same gateway) starts a new run."""
    addresses = [_address(ep) for g in cla.endpoints for ep in g.lb_endpoints]
    if len(set(addresses)) == len(addresses):
        return None  # the usual case: every address once
    levels = sorted({g.priority for g in cla.endpoints})
    seen: dict[tuple[str, int], set[bytes]] = {}
    runs: list[list[int]] = []
    in_run: set[tuple[str, int]] = set()
    kept_groups = []
    for level in levels:
        here: set[tuple[str, int]] = set()
        groups = []
        for group in (g for g in cla.endpoints if g.priority == level):
            kept = []
            for ep in group.lb_endpoints:
                address, meta = _address(ep), ep.metadata.SerializeToString(deterministic=True)
                if address in here or meta in seen.get(address, ()):
                    continue
                here.add(address)
                kept.append(ep)
            if kept:
                copy = endpoint_components_pb2.LocalityLbEndpoints()
                copy.CopyFrom(group)
                del copy.lb_endpoints[:]
                copy.lb_endpoints.extend(kept)
                groups.append(copy)
        if not groups:
            continue
        for group in groups:
            for ep in group.lb_endpoints:
                seen.setdefault(_address(ep), set()).add(ep.metadata.SerializeToString(deterministic=True))
        priority = len([p for run in runs for p in run])
        for group in groups:
            group.priority = priority
        if not runs or in_run & here:
            runs.append([])
            in_run = set()
        runs[-1].append(priority)
        in_run |= here
        kept_groups.extend(groups)
    if [g.SerializeToString(deterministic=True) for g in kept_groups] != \
            [g.SerializeToString(deterministic=True) for g in cla.endpoints]:
        del cla.endpoints[:]
        cla.endpoints.extend(kept_groups)
    return runs if len(runs) > 1 else None


def _child_assignment(cla: endpoint_pb2.ClusterLoadAssignment, run: list[int], n: int
                      ) -> endpoint_pb2.ClusterLoadAssignment:
    child = endpoint_pb2.ClusterLoadAssignment(cluster_name=f"{cla.cluster_name}{CHILD_SEPARATOR}{n}")
    if cla.HasField("policy"):
        child.policy.CopyFrom(cla.policy)
    renumber = {p: i for i, p in enumerate(run)}
    for group in cla.endpoints:
        if group.priority in renumber:
            copy = child.endpoints.add()
            copy.CopyFrom(group)
            copy.priority = renumber[group.priority]
    return child


def _aggregate(cluster: cluster_pb2.Cluster, children: list[str]) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name=cluster.name, lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
                              cluster_type=cluster_pb2.Cluster.CustomClusterType(
                                  name=AGGREGATE_CLUSTER, typed_config=pack(aggregate_pb2.ClusterConfig(
                                      clusters=children))))
    if cluster.HasField("connect_timeout"):
        out.connect_timeout.CopyFrom(cluster.connect_timeout)
    if cluster.alt_stat_name:
        out.alt_stat_name = cluster.alt_stat_name
    if cluster.HasField("circuit_breakers"):  # the router checks the route's cluster's (retries, requests)
        out.circuit_breakers.CopyFrom(cluster.circuit_breakers)
    return out


def split_shared_addresses(resources: dict[str, list]) -> None:
    """Rewrite ``resources`` (one proxy's, after the plugins) in place as the module docstring says."""
    runs: dict[str, list[list[int]]] = {}
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for cla in resources.get(ENDPOINT, ()):
        if not isinstance(cla, endpoint_pb2.ClusterLoadAssignment):
            continue
        found = _runs(cla)
        if found is not None:
            runs[cla.cluster_name] = found
            assignments[cla.cluster_name] = cla
    if not runs:
        return
    clusters: list = []
    for cluster in resources.get(CLUSTER, ()):
        eds = (cluster.eds_cluster_config.service_name or cluster.name) \
            if isinstance(cluster, cluster_pb2.Cluster) and cluster.type == cluster_pb2.Cluster.EDS else None
        if eds not in runs:
            clusters.append(cluster)
            continue
        names = []
        for n in range(len(runs[eds])):
            child = cluster_pb2.Cluster()
            child.CopyFrom(cluster)
            child.name = f"{cluster.name}{CHILD_SEPARATOR}{n}"
            child.eds_cluster_config.service_name = f"{eds}{CHILD_SEPARATOR}{n}"
            child.alt_stat_name = cluster.alt_stat_name or cluster.name
            clusters.append(child)
            names.append(child.name)
        clusters.append(_aggregate(cluster, names))
    resources[CLUSTER] = clusters
    endpoints: list = []
    for cla in resources.get(ENDPOINT, ()):
        name = getattr(cla, "cluster_name", None)
        if name in runs:
            endpoints.extend(_child_assignment(assignments[name], run, n) for n, run in enumerate(runs[name]))
        else:
            endpoints.append(cla)
    resources[ENDPOINT] = endpoints


__all__ = ["AGGREGATE_CLUSTER", "CHILD_SEPARATOR", "split_shared_addresses"]
