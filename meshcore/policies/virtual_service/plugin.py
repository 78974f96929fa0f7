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
* TCP upstreams: the first ``tcp[]`` rule becomes the tcp_proxy's (weighted) clusters; ``tls[]`` rules come before it
  as SNI-matched chains (:mod:`.tls_routes`: the app's own TLS passed through, routed by server name). An upstream
  naming a ServiceEntry host counts as TCP on a TLS or TCP port of the entry.
* A destination outside the caller's Sidecar (``egress[].hosts``) refuses the config, as a missing subset does.

A destination naming a subset that no DestinationRule defines refuses this proxy's config
(:class:`~meshcore.errors.SnapshotInvalid`): the proxy keeps its last good config and the error shows
in ``meshctl get proxies``.
"""

from __future__ import annotations

from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ... import naming
from ...errors import OutOfScope, RouteProblem, SnapshotInvalid
from ...snapshot import MeshSnapshot, ProxyInfo
from ...traffic.clusters import ClusterSet, MissingSubset
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from ...xds.generate.routes import DEFAULT_ROUTE_TIMEOUT_S
from ...xds.generate.vocab import LISTENER, ROUTE
from ..destination_rule.clusters import route_hash_policies
from .cors import CORS_FILTER, ensure_cors_filter
from ...xds.generate.listeners import TLS_INSPECTOR
from ...xds.generate.sidecar_scope import allows, sidecar_for
from ..service_entry.plugin import upstream_family
from .ports import destination_policy, host_ports, port_cluster
from .routes import http_routes, weighted_tcp
from .tls_routes import tls_chains
from .schema import KIND_NAME, service_for
from .spec import spec_of

KIND = KIND_NAME


def check_fault_filter(listener: c.ListenerDraft) -> list[str]:
    """Problems that would leave faults sent per route unapplied: an HCM of ``listener`` without the fault filter."""
    return [f"listener {listener.name!r}: the HttpConnectionManager lacks the fault filter {pf.FAULT!r} before its "
            "router, so the fault would not be injected"
            for _chain, hcm in listener.http_managers() if not pf.has_fault_filter(hcm)]


def add_tls_routes(listener: c.ListenerDraft, vs, cluster_for, caller, port: int | None = None,
                   host_ports=None, policy_for=None) -> None:
    """``vs``'s ``tls[]`` rules on a TCP upstream's listener (of ``port``): SNI-matched chains before its default one
    (the ``tcp[]`` route, or the upstream itself), the TLS inspector to read the SNI; ``policy_for``: each
    destination's DestinationRule policy (its ``tcp.idleTimeout`` and ``tunnel`` on the chain)."""
    chains = tls_chains(f"{vs.namespace}/{vs.name}", spec_of(vs), cluster_for, caller, port, host_ports=host_ports,
                        policy_for=policy_for)
    if not chains:
        return
    if not any(f.name == TLS_INSPECTOR for f in listener.message.listener_filters):
        listener.message.listener_filters.add(name=TLS_INSPECTOR, typed_config=c.pack(tls_inspector_pb2.TlsInspector()))
    listener.filter_chains[:0] = chains


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    services = snapshot.resources_of(KIND)
    if not services:
        return
    clusters = ClusterSet(snapshot, proxy, resources)
    sidecars = snapshot.resources_of("Sidecar")
    routes = {r.name: r for r in resources[ROUTE]}
    listeners = {l.name: l for l in resources[LISTENER]}
    problems: list[str] = []
    for src, up in c.outbound_bindings(snapshot, proxy):
        host = up.destination_name
        vs = service_for(services, host)
        if vs is None:
            continue

        def cluster_for(dest: str, subset: str | None, port: int | None = None, _src=src, _up=up) -> str:
            dc = _up.datacenter if dest == _up.destination_name else None
            if dest != _up.destination_name and sidecars and not allows(snapshot, sidecar_for(sidecars, _src), dest):
                raise OutOfScope(f"destination {dest!r} is not among the egress hosts of the Sidecar of {_src.id}; "
                                 "add it to the Sidecar's egress[].hosts")
            if port is not None:
                return port_cluster(clusters, _src, dest, subset, port, dc)
            return clusters.ensure(_src, dest, subset, dc)

        def hash_for(dest: str, subset: str | None, port: int | None = None, _src=src) -> list:
            return route_hash_policies(destination_policy(clusters, dest, subset, port, _src))

        def ports_of_host(_host=host, _bind=up.local_bind_port) -> frozenset[int]:
            return host_ports(snapshot, _host, _bind)

        where = f"VirtualService {vs.namespace}/{vs.name} for upstream {host!r} of {src.id}"
        try:
            spec = spec_of(vs)
            family = upstream_family(snapshot, host, up.local_bind_port)  # a ServiceEntry host's port, or None
            if (family in ("tls", "tcp")) if family is not None else c.upstream_protocol(snapshot, up) == "tcp":
                listener = listeners.get(naming.outbound_listener(host, up.local_bind_port))
                for chain in listener.filter_chains if listener is not None else ():
                    for f in chain.filters:
                        if isinstance(f.config, tcp_proxy_pb2.TcpProxy) and spec.tcp:
                            weighted_tcp(f.config, vs, cluster_for, (src.labels, src.namespace), up.local_bind_port,
                                         ports_of_host)
                if listener is not None and spec.tls:
                    add_tls_routes(listener, vs, lambda d, _cf=cluster_for: _cf(d.host, d.subset, d.port),
                                   (src.labels, src.namespace), up.local_bind_port, ports_of_host,
                                   lambda d, _src=src: destination_policy(clusters, d.host, d.subset, d.port, _src))
                continue
            if spec.tls:
                problems.append(f"{where}: tls routes need a TLS or TCP upstream (the app's own TLS, routed by SNI), "
                                "and this upstream is HTTP; route it with http rules")
            if not spec.http:
                continue
            route_config = routes.get(naming.outbound_route(host, up.local_bind_port))
            if route_config is None:
                continue
            compiled = http_routes(vs, cluster_for, hash_for, DEFAULT_ROUTE_TIMEOUT_S, (src.labels, src.namespace),
                                   port=up.local_bind_port, services=services, host_ports=ports_of_host)
            for vhost in route_config.virtual_hosts:
                del vhost.routes[:]
                vhost.routes.extend(compiled)
            if any(CORS_FILTER in r.typed_per_filter_config for r in compiled):  # delegated rules' too
                listener = listeners.get(naming.outbound_listener(host, up.local_bind_port))
                for _chain, hcm in listener.http_managers() if listener is not None else ():
                    ensure_cors_filter(hcm)
            if any(pf.FAULT in r.typed_per_filter_config for r in compiled):
                listener = listeners.get(naming.outbound_listener(host, up.local_bind_port))
                if listener is not None:
                    problems.extend(f"{where}: {p}" for p in check_fault_filter(listener))
        except (MissingSubset, OutOfScope, RouteProblem) as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise SnapshotInvalid(proxy.node, problems)


__all__ = ["apply", "check_fault_filter"]
