"""The service graph split by version and datacenter, and the mesh gateways' own figures (pure, no IO).

What each label means, and why the called side is read from the caller's per-endpoint stats, is in
"Versions and datacenters" of :mod:`meshcore.observe.signals`. In short: the caller's node says which
version (and datacenter) of the source service made the calls; the endpoint address the caller's Envoy sent
each request to says which instance answered, or which mesh gateway carried it to another datacenter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._proxy_stats import ProxyStats, counter_delta
from .graph import _cluster_edge, _Series

MESH_GATEWAY_KIND = "mesh-gateway"  # meshcore.catalog.model.MESH_GATEWAY (not imported: this module stays light)
VERSION_LABEL = "version"  # the workload label a version is (Consul meta ``version``: what subsets select on)

#: ``(source, source_version, source_datacenter, destination, destination_version, destination_datacenter,
#: gateway)``: the order of :data:`~meshcore.observe.signals.VERSION_EDGE_LABELS`.
EdgeKey = tuple[str, str, str, str, str, str, str]
#: ``(gateway node, its datacenter, service or "", destination datacenter)``: :data:`~.signals.GATEWAY_LABELS`.
GatewayKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class Workload:
    """One catalog instance as the graph names it: its service, version and datacenter, and where the mesh
    reaches it (``addresses``, ``host:port`` as Envoy prints them: a service's mesh address; a mesh gateway's
    LAN and WAN ones)."""

    id: str
    service: str
    version: str = ""
    datacenter: str = ""
    kind: str = ""  # "" (a mesh service), "mesh-gateway", "ingress-gateway", ...
    addresses: tuple[str, ...] = ()


def host_port(host: str, port: int) -> str:
    """``host:port`` as Envoy names an endpoint (``[v6]:port``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def workload_of(instance: Any) -> Workload:
    """The :class:`Workload` of a catalog :class:`~meshcore.catalog.model.ServiceInstance`: a mesh service's
    version (its ``version`` label) and mesh address; a mesh gateway's LAN and WAN addresses; for other kinds
    (ingress gateways: they are callers only) neither."""
    addresses: list[str] = []
    if instance.kind in ("", MESH_GATEWAY_KIND) and instance.mesh_address and instance.mesh_port:
        addresses.append(host_port(instance.mesh_address, instance.mesh_port))
    if instance.kind == MESH_GATEWAY_KIND and instance.wan_address and instance.wan_port:
        wan = host_port(instance.wan_address, instance.wan_port)
        if wan not in addresses:
            addresses.append(wan)
    return Workload(id=instance.id, service=instance.service,
                    version=instance.labels.get(VERSION_LABEL, "") if not instance.kind else "",
                    datacenter=instance.datacenter or "", kind=instance.kind or "", addresses=tuple(addresses))


def workloads_of_status(services: Iterable[Any], gateways: Iterable[Any]) -> tuple[Workload, ...]:
    """The same :class:`Workload` values from a node's ``/v1/proxies`` entries (:class:`~meshcore.api.operator.
    ServiceStatus`, :class:`~meshcore.api.operator.GatewayStatus`): services first, then gateways."""
    out = []
    for s in services:
        host, _, port = s.inbound.rpartition(":")
        address = (host_port(host.strip("[]"), int(port)),) if host and port.isdigit() and int(port) else ()
        out.append(Workload(id=s.id, service=s.name, version=dict(s.labels).get(VERSION_LABEL, ""),
                            datacenter=s.datacenter, addresses=address))
    for g in gateways:
        out.append(Workload(id=g.id, service=g.name, datacenter=g.datacenter, kind=g.kind,
                            addresses=tuple(g.addresses) if g.kind == MESH_GATEWAY_KIND else ()))
    return tuple(out)


@dataclass(frozen=True)
class Directory:
    """Every workload of the mesh, found by endpoint address, by node and by service."""

    by_address: Mapping[str, tuple[str, Workload]] = field(default_factory=dict)  # address -> (node, workload)
    by_node: Mapping[str, tuple[Workload, ...]] = field(default_factory=dict)
    by_service: Mapping[str, tuple[Workload, ...]] = field(default_factory=dict)  # mesh services only

    @classmethod
    def of(cls, placements: Iterable[tuple[str, Sequence[Workload]]]) -> "Directory":
        """From ``(node, its workloads)`` pairs (the collector's scrape targets)."""
        by_address: dict[str, tuple[str, Workload]] = {}
        by_node: dict[str, tuple[Workload, ...]] = {}
        by_service: dict[str, list[Workload]] = {}
        for node, workloads in placements:
            by_node[node] = tuple(workloads)
            for w in workloads:
                for address in w.addresses:
                    by_address.setdefault(address, (node, w))
                if not w.kind:
                    by_service.setdefault(w.service, []).append(w)
        return cls(by_address, by_node, {k: tuple(v) for k, v in by_service.items()})


def _one(values: Iterable[str]) -> str:
    """The single distinct value ("" when there are none or several: not known)."""
    found = set(values)
    return found.pop() if len(found) == 1 else ""


def _joined(values: Iterable[str]) -> str:
    return ",".join(sorted({v for v in values if v}))


@dataclass
class VersionSeries:
    """A version edge's requests in one interval; ``exact`` while its histogram holds all of them."""

    series: _Series = field(default_factory=_Series)
    exact: bool = True

    def add(self, other: "VersionSeries") -> None:
        self.series.add(other.series)
        self.exact = self.exact and other.exact


def version_edges(node: str, before: ProxyStats, after: ProxyStats, directory: Directory) -> dict[EdgeKey, VersionSeries]:
    """One proxy's version edges between two scrapes (every endpoint its clusters list, idle ones included).

    An outbound cluster without per-endpoint stats (an Envoy configured before they were on, or a cluster
    with no endpoint yet) is one edge to the destination's single version and datacenter when it has one
    ("" otherwise), with the cluster's own counters."""
    local = directory.by_node.get(node, ())
    out: dict[EdgeKey, VersionSeries] = {}
    answered: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # (address, dst, src dc) -> _answered_by
    callers: dict[str, tuple[str, str]] = {}  # source service -> (its versions, datacenters) on this node
    for cluster, totals in after.graph.clusters.items():
        pair = _cluster_edge(cluster)
        if pair is None:
            continue
        src, dst = pair
        caller = callers.get(src)
        if caller is None:
            mine = [w for w in local if w.service == src]
            caller = callers[src] = (_joined(w.version for w in mine), _joined(w.datacenter for w in mine))
        src_version, src_dc = caller
        endpoints = after.endpoints.get(cluster)
        if not endpoints:
            instances = directory.by_service.get(dst, ())
            key = (src, src_version, src_dc, dst, _one(w.version for w in instances),
                   _one(w.datacenter for w in instances), "")
            out.setdefault(key, VersionSeries()).add(VersionSeries(totals.minus(before.graph.clusters.get(cluster, _Series()))))
            continue
        earlier = before.endpoints.get(cluster, {})
        parts: dict[EdgeKey, list[float]] = {}  # key -> [requests, errors]
        for address, series in endpoints.items():
            prev = earlier.get(address)
            if prev is None or series.total < prev.total:  # new, or Envoy restarted: both count from 0
                total, errors = series.total, series.errors
            else:
                total, errors = series.total - prev.total, max(0.0, series.errors - prev.errors)
            where = answered.get((address, dst, src_dc))
            if where is None:
                where = answered[(address, dst, src_dc)] = _answered_by(address, dst, src_dc, directory)
            counts = parts.setdefault((src, src_version, src_dc, dst, *where), [0.0, 0.0])
            counts[0] += total
            counts[1] += errors
        busy = [k for k, (total, _) in parts.items() if total > 0]
        for key, (total, errors) in parts.items():
            part = out.setdefault(key, VersionSeries())
            part.series.total += total
            part.series.errors += errors
            if total > 0 and len(busy) > 1:
                part.exact = False  # several version edges shared the cluster's histogram: no p99 of their own
        if len(busy) == 1:  # every request of the interval went to one version edge: the histogram is its own
            whole = totals.minus(before.graph.clusters.get(cluster, _Series()))
            out[busy[0]].series.add(_Series(buckets=whole.buckets))
    return out


def _answered_by(address: str, dst: str, src_dc: str, directory: Directory) -> tuple[str, str, str]:
    """``(destination version, destination datacenter, gateway node)`` of requests a caller in ``src_dc`` sent to
    endpoint ``address`` of service ``dst``."""
    found = directory.by_address.get(address)
    if found is None:
        return "", "", ""
    node, w = found
    if w.kind != MESH_GATEWAY_KIND:
        return w.version, w.datacenter, ""
    instances = directory.by_service.get(dst, ())
    if w.datacenter and w.datacenter != src_dc:  # a remote datacenter's gateway (mode remote, or its WAN side)
        dcs = {w.datacenter}
    else:  # a gateway of the caller's own datacenter forwards to the other datacenters with instances
        dcs = {i.datacenter for i in instances if i.datacenter and i.datacenter != src_dc}
    return _one(i.version for i in instances if i.datacenter in dcs), _joined(dcs), node


def gateway_routes(node: str, before: ProxyStats, after: ProxyStats,
                   directory: Directory) -> dict[GatewayKey, tuple[_Series, float]]:
    """A mesh gateway's connections per route between two scrapes (``total`` attempts, ``errors`` failed) and
    the bytes it carried on them."""
    own = _joined(w.datacenter for w in directory.by_node.get(node, ()) if w.kind == MESH_GATEWAY_KIND)
    known = {w.datacenter for workloads in directory.by_node.values() for w in workloads if w.datacenter}
    out: dict[GatewayKey, tuple[_Series, float]] = {}
    for (service, dc), series in after.gateway.items():
        prev = before.gateway.get((service, dc))
        total = counter_delta(series.total, prev.total if prev else None)
        errors = counter_delta(series.errors, prev.errors if prev else None)
        carried = counter_delta(after.gateway_bytes.get((service, dc), 0.0), before.gateway_bytes.get((service, dc)))
        key = (node, own, service, _datacenter(dc, known))
        seen, seen_bytes = out.get(key, (_Series(), 0.0))  # a service's subsets fold into its route
        seen.add(_Series(total, min(errors, total) if total else errors))
        out[key] = (seen, seen_bytes + carried)
    return out


def _datacenter(spelled: str, known: set[str]) -> str:
    """The datacenter of a gateway route as Envoy spelled it: a subset cluster's ``<dc>|<subset>`` comes as
    ``<dc>_<subset>`` in the sample's name; the longest known datacenter it starts with is it."""
    if spelled in known or not known:
        return spelled
    found = [dc for dc in known if spelled.startswith(dc + "_")]
    return max(found, key=len) if found else spelled


def version_edge_labels(key: EdgeKey) -> dict[str, str]:
    names = ("source", "source_version", "source_datacenter", "destination", "destination_version",
             "destination_datacenter", "gateway")
    return dict(zip(names, key))


def gateway_labels(key: GatewayKey) -> dict[str, str]:
    return dict(zip(("gateway", "datacenter", "service", "destination_datacenter"), key))


__all__ = ["Directory", "EdgeKey", "GatewayKey", "VersionSeries", "Workload", "gateway_labels", "gateway_routes",
           "host_port", "version_edge_labels", "version_edges", "workload_of", "workloads_of_status"]
