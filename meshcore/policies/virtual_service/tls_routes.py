"""VirtualService ``tls[]`` -> Envoy filter chains matched by SNI, each a (weighted) tcp_proxy (pure).

TLS is passed through, never terminated: the listener's TLS inspector reads the server name from the ClientHello and
the chain whose ``server_names`` hold it forwards the connection's bytes. Rules are tried in order, as Istio's: a
server name an earlier rule already claims is left out of later ones (Envoy refuses two chains with the same match).

Each chain's tcp_proxy carries its destinations' DestinationRule ``connectionPool.tcp.idleTimeout`` (``idle_timeout``:
the shortest of them) and ``tunnel`` (``tunneling_config``: every connection of the chain becomes an HTTP CONNECT, or
POST, to ``targetHost:targetPort`` through the destination), as an upstream's default chain does
(:mod:`meshcore.policies.destination_rule.tcp_options`), when the caller gives ``policy_for``: both are settings of
Envoy's tcp_proxy, so of the chain, not of a cluster. Destinations of one rule tunnelling differently cannot share
the chain: :class:`~meshcore.errors.RouteProblem` (the proxy's config is refused, it keeps its last good one).
"""

from __future__ import annotations

from typing import Callable, Collection, Mapping


from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ...errors import RouteProblem
from ...xds.generate import vocab as c
from ...xds.generate.listeners import TCP_PROXY
from ..destination_rule.spec import TrafficPolicy
from ..destination_rule.tcp_options import apply_tcp, tcp_settings
from .spec import Destination, ListenerPorts, RouteDestination, VirtualServiceSpec

DestinationCluster = Callable[[Destination], str]
"""``destination -> cluster name`` (adds the cluster when it is new)."""
DestinationPolicy = Callable[[Destination], TrafficPolicy]
"""``destination -> the traffic policy of its cluster`` as the calling workload sees it (its DestinationRule)."""


def _live(route: tuple[RouteDestination, ...]) -> list[RouteDestination]:
    return [d for d in route if d.weight > 0] if len(route) > 1 else list(route)


def tcp_proxy(stat_prefix: str, route: tuple[RouteDestination, ...], cluster_for: DestinationCluster) -> tcp_proxy_pb2.TcpProxy:
    """One tcp_proxy over ``route``'s destinations (weighted when several; weight 0 left out, as Istio does)."""
    live = _live(route)
    out = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix.replace(":", "_").replace(".", "_").replace("/", "_"))
    if len(live) == 1:
        out.cluster = cluster_for(live[0].destination)
        return out
    for d in live:
        out.weighted_clusters.clusters.add(name=cluster_for(d.destination), weight=d.weight)
    return out


def tls_chains(name: str, spec: VirtualServiceSpec, cluster_for: DestinationCluster,
               caller: tuple[Mapping[str, str], str], listener_port: int | None = None,
               claimed: set[str] | None = None,
               host_ports: Callable[[], Collection[int]] | None = None,
               policy_for: DestinationPolicy | None = None, mesh: bool = True) -> list[c.ChainDraft]:
    """One SNI-matched chain per ``tls[].match[]`` alternative that applies to ``caller`` (labels, namespace) on a
    listener of ``listener_port`` (a match's ``port``, when given, must be it). ``claimed`` (updated) holds the
    server names earlier chains of the same listener already match. ``name`` prefixes the chains' names.
    ``host_ports``: the port of the upstream's host a match ``port`` may name instead of the listener's.
    ``policy_for``: each destination's traffic policy, whose ``tcp.idleTimeout`` and ``tunnel`` go on the chain's
    tcp_proxy (see the module docstring); raises :class:`~meshcore.errors.RouteProblem` on differing tunnels.
    ``mesh``: a sidecar's listener, where an alternative whose ``gateways`` leave out ``mesh`` does not apply
    (gateways pass False, their alternatives already chosen by gateway)."""
    claimed = set() if claimed is None else claimed
    listener = ListenerPorts(listener_port, host_ports)
    out: list[c.ChainDraft] = []
    for i, rule in enumerate(spec.tls):
        for j, m in enumerate(rule.match):
            if not m.from_caller(*caller) or not listener.admits(m.port) or mesh and m.gateways and \
                    "mesh" not in m.gateways:
                continue
            names = [s for s in m.sni_hosts if s not in claimed]
            if not names:
                continue
            claimed.update(names)
            chain_name = f"{name}/tls[{i}]" + (f"/match[{j}]" if len(rule.match) > 1 else "")
            chain = listener_components_pb2.FilterChain(
                name=chain_name, filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=names))
            proxy = tcp_proxy(chain_name, rule.route, cluster_for)
            if policy_for is not None:
                chain_options(proxy, f"spec.tls[{i}].route", rule.route, policy_for)
            out.append(c.ChainDraft(chain, [c.NetworkFilter(TCP_PROXY, proxy)]))
    return out


def chain_options(proxy: tcp_proxy_pb2.TcpProxy, where: str, route: tuple[RouteDestination, ...],
                  policy_for: DestinationPolicy) -> None:
    """``proxy`` (one tls[] rule's) gets its live destinations' ``tcp.idleTimeout`` (the shortest) and ``tunnel``."""
    policies = [policy_for(d.destination) for d in _live(route)]
    idle, tunnel, problem = tcp_settings(where, policies)
    if problem is not None:
        raise RouteProblem(f"{where}: its destinations' DestinationRules tunnel differently (tunnel), and one SNI "
                           "filter chain has one tunnel: give them the same tunnel, or route them from different "
                           "tls rules")
    apply_tcp(proxy, idle, tunnel)


__all__ = ["tcp_proxy", "tls_chains", "chain_options", "DestinationCluster", "DestinationPolicy"]
