"""VirtualService: the routes of every outbound listener whose upstream a VirtualService names.

For each upstream a proxy declared and a VirtualService lists in ``hosts``:

* HTTP upstreams: the outbound RouteConfiguration's routes are replaced by the VirtualService's
  ``http[]`` rules, in order (no rule matching: 404, as in Istio); destinations become the upstream's
  cluster, subset clusters (``outbound:<host>|<source>|<subset>``) or clusters of other services, added
  with their endpoints when new. A rule with ``fault`` gets its ``HTTPFault`` per route
  (``typed_per_filter_config`` keyed ``meshcore.fault``). The listener is never touched: every outbound
  HttpConnectionManager already carries that fault filter, empty, before its router
  (:mod:`meshcore.xds.generate.policy_filters`), so a fault change is a route (RDS) update that applies to
  the next request on every open connection, where a listener update would leave keep-alive connections
  on the old filters until they drained. A fault on a listener without the filter would be silently
  ignored, so that refuses the proxy's config instead (fails closed).
* TCP upstreams: the first ``tcp[]`` rule becomes the tcp_proxy's (weighted) clusters.

A destination naming a subset that no DestinationRule defines refuses this proxy's config
(:class:`~meshcore.errors.SnapshotInvalid`): the proxy keeps its last good config and the error shows
in ``meshctl get proxies``.
"""

from __future__ import annotations

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...errors import SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet, MissingSubset
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from ...xds.generate.routes import DEFAULT_ROUTE_TIMEOUT_S
from ...xds.generate.vocab import LISTENER, ROUTE
from ..destination_rule.clusters import route_hash_policies
from .routes import http_routes, weighted_tcp
from .schema import KIND_NAME, service_for
from .spec import spec_of

KIND = KIND_NAME


def check_fault_filter(listener: c.ListenerDraft) -> list[str]:
    """Problems that would leave faults sent per route unapplied: an HCM of ``listener`` without the fault filter."""
    return [f"listener {listener.name!r}: the HttpConnectionManager lacks the fault filter {pf.FAULT!r} before its "
            "router, so the fault would not be injected"
            for _chain, hcm in listener.http_managers() if not pf.has_fault_filter(hcm)]


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    services = snapshot.resources_of(KIND)
    if not services:
        return
    clusters = ClusterSet(snapshot, proxy, resources)
    routes = {r.name: r for r in resources[ROUTE]}
    listeners = {l.name: l for l in resources[LISTENER]}
    problems: list[str] = []
    for src, up in c.outbound_bindings(snapshot, proxy):
        host = up.destination_name
        vs = service_for(services, host)
        if vs is None:
            continue

        def cluster_for(dest: str, subset: str | None, _src=src, _up=up) -> str:
            dc = _up.datacenter if dest == _up.destination_name else None
            return clusters.ensure(_src, dest, subset, dc)

        def hash_for(dest: str, subset: str | None) -> list:
            return route_hash_policies(clusters.policy(dest, subset))

        where = f"VirtualService {vs.namespace}/{vs.name} for upstream {host!r} of {src.id}"
        try:
            if c.upstream_protocol(snapshot, up) == "tcp":
                listener = listeners.get(naming.outbound_listener(host, up.local_bind_port))
                for chain in listener.filter_chains if listener is not None else ():
                    for f in chain.filters:
                        if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
                            weighted_tcp(f.config, vs, cluster_for)
                continue
            spec = spec_of(vs)
            if not spec.http:
                continue
            route_config = routes.get(naming.outbound_route(host, up.local_bind_port))
            if route_config is None:
                continue
            compiled = http_routes(vs, cluster_for, hash_for, DEFAULT_ROUTE_TIMEOUT_S, (src.labels, src.namespace))
            for vhost in route_config.virtual_hosts:
                del vhost.routes[:]
                vhost.routes.extend(compiled)
            if spec.has_fault:
                listener = listeners.get(naming.outbound_listener(host, up.local_bind_port))
                if listener is not None:
                    problems.extend(f"{where}: {p}" for p in check_fault_filter(listener))
        except MissingSubset as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise SnapshotInvalid(proxy.node, problems)


__all__ = ["apply", "check_fault_filter"]
