"""Gateway TCP servers (pure): ``protocol: TCP`` or ``MONGO`` (TCP to Envoy) in plaintext, and ``protocol: TLS`` with a
terminating mode (``SIMPLE``, ``MUTUAL``, ``OPTIONAL_MUTUAL``, ``ISTIO_MUTUAL``), whose bytes behind the TLS the
gateway routes as TCP.

As Istio's tcp-echo sample: the VirtualServices bound to the Gateway whose hosts a server's hosts cover route the
server's connections with their ``tcp[]`` rules, in order (by VirtualService namespace and name, then rule): the first
rule without ``match``, or with an alternative whose ``port`` is the server's, whose ``gateways`` (or the
VirtualService's) name the Gateway and whose ``sourceLabels`` / ``sourceNamespace`` the gateway instance has, becomes
the chain's (weighted) ``tcp_proxy``; weight-0 destinations are left out, as Istio does. A plaintext TCP port has one
chain: nothing in the bytes tells its servers apart. A TLS server terminated here has one chain of its own, matched
by the SNI names of its hosts and carrying its certificate (:func:`.servers.downstream_tls`); bound ``tls[]`` rules
first take the SNI names they match (each its own chain with the same TLS), then the server's ``tcp[]`` rule takes
the rest. A server that no rule routes gets no chain (no listener when the whole port is unrouted), as a PASSTHROUGH
server without ``tls[]`` routes.

Destinations are mesh services (the gateway's mTLS to their sidecars, as for HTTP routes) or ServiceEntry hosts
(their clusters, with the DestinationRule's TLS origination); ``destination.port`` picks the port of the host.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from envoy.config.listener.v3 import listener_components_pb2

from ...resources.model import Resource
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.listeners import TCP_PROXY
from ..virtual_service.routes import tcp_rule
from ..virtual_service.spec import Destination, TcpRoute
from ..virtual_service.tls_routes import tcp_proxy, tls_chains
from .passthrough import as_bound
from .servers import TLS_SOCKET, BoundServer, Port, downstream_tls, host_intersection, namespace_ok, server_names
from .spec import ServerTls

DestinationCluster = Callable[[Destination], str]
Caller = tuple[Mapping[str, str], str]


def _routes_server(b: BoundServer, vs: Resource) -> bool:
    """Whether ``vs``'s hosts and ``b``'s server hosts share a host (the VirtualService routes that server)."""
    return any(namespace_ok(ref, b.gateway, vs) and host_intersection(ref.host, h) is not None
               for ref in b.server.hosts for h in vs.typed.hosts)


def server_rule(b: BoundServer, bound: Sequence[tuple[Resource, tuple[str, ...]]],
                caller: Caller) -> tuple[Resource, int, TcpRoute] | None:
    """The ``tcp[]`` rule that routes ``b``'s connections: (VirtualService, rule index, rule), or None."""
    for vs, gateways in bound:
        if b.ref not in gateways or not _routes_server(b, vs):
            continue
        rule = tcp_rule(vs, caller, b.server.port, gateway=b.ref)
        if rule is not None:
            return vs, vs.typed.tcp.index(rule), rule
    return None


def _chain(name: str, rule: TcpRoute, cluster_for: DestinationCluster,
           match: listener_components_pb2.FilterChainMatch | None = None) -> c.ChainDraft:
    chain = listener_components_pb2.FilterChain(name=name)
    if match is not None:
        chain.filter_chain_match.CopyFrom(match)
    return c.ChainDraft(chain, [c.NetworkFilter(TCP_PROXY, tcp_proxy(name, rule.route, cluster_for))])


def plaintext_chains(port: Port, bound: Sequence[tuple[Resource, tuple[str, ...]]], cluster_for: DestinationCluster,
                     caller: Caller) -> list[c.ChainDraft]:
    """The one chain of a plaintext TCP port: the first server (in the Gateways' order) a ``tcp[]`` rule routes."""
    for b in port.servers:
        found = server_rule(b, bound, caller)
        if found is not None:
            vs, i, rule = found
            return [_chain(f"{b.ref}/{vs.namespace}/{vs.name}/tcp[{i}]", rule, cluster_for)]
    return []


def terminated_chains(snapshot: MeshSnapshot, proxy: ProxyInfo, instance, port: Port,
                      bound: Sequence[tuple[Resource, tuple[str, ...]]], cluster_for: DestinationCluster,
                      caller: Caller) -> list[c.ChainDraft]:
    """The chains of a TLS port's servers that terminate TLS and route TCP behind it: per server, its bound
    ``tls[]`` rules' SNI chains, then one chain for its other names routed by its ``tcp[]`` rule; each with the
    server's TLS."""
    out: list[c.ChainDraft] = []
    claimed: set[str] = set()
    for b in port.servers:
        if not b.server.routes_tcp:
            continue
        tls = c.transport_socket(TLS_SOCKET, downstream_tls(b.server.tls or ServerTls(), snapshot, proxy, instance))
        chains = [chain for vs, gateways in bound if b.ref in gateways
                  for chain in tls_chains(f"{b.ref}/{vs.namespace}/{vs.name}", as_bound(b, vs), cluster_for, caller,
                                          port.port, claimed, mesh=False)]
        names = server_names(b.server)
        rest = [n for n in names if n not in claimed]
        found = server_rule(b, bound, caller)
        if found is not None and (rest or not names):
            vs, i, rule = found
            match = listener_components_pb2.FilterChainMatch(server_names=rest)
            chains.append(_chain(f"{b.ref}/{vs.namespace}/{vs.name}/tcp[{i}]", rule, cluster_for, match))
            claimed.update(rest)
        for chain in chains:
            chain.message.transport_socket.CopyFrom(tls)
        out += chains
    return out


__all__ = ["plaintext_chains", "terminated_chains", "server_rule"]
