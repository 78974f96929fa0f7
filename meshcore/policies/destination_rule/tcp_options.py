"""DestinationRule -> the tcp_proxy of a TCP upstream's listener: ``connectionPool.tcp.idleTimeout`` and ``tunnel``.

Both are settings of the listener's tcp_proxy, not of a cluster, so they come from the policies of the
destinations the listener sends to: the host itself, or the subsets (and hosts) of its VirtualService's first
``tcp[]`` rule (which the VirtualService plugin turns into the tcp_proxy's weighted clusters after this one runs).

* ``tcp.idleTimeout`` -> ``idle_timeout`` (no bytes either way for that long closes both sides; Envoy's and
  Istio's default 1 h, ``0s`` never); destinations with different timeouts: the shortest.
* ``tunnel`` -> ``tunneling_config``: the connection to the host (an HTTP proxy outside the mesh, a ServiceEntry
  host) starts with ``CONNECT targetHost:targetPort`` (``POST`` with ``protocol: POST``) and carries the bytes
  through it. Destinations tunnelling differently cannot share one listener: the proxy's config is refused.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from ...resources.model import Resource
from ..virtual_service.spec import spec_of as vs_spec
from .spec import TrafficPolicy, Tunnel

PolicyOf = Callable[[str, "str | None"], TrafficPolicy]


def destinations(host: str, vs: Resource | None) -> list[tuple[str, str | None]]:
    """Where a TCP upstream of ``host`` sends its connections: its VirtualService's first tcp rule's, else itself."""
    rules = vs_spec(vs).tcp if vs is not None else ()
    if not rules:
        return [(host, None)]
    return [(d.destination.host, d.destination.subset) for d in rules[0].route]


def tcp_settings(host: str, policies: list[TrafficPolicy]) -> tuple[float | None, Tunnel | None, str | None]:
    """(idle timeout, tunnel, problem) for a listener whose destinations have ``policies``."""
    idle = [p.connection_pool.tcp_idle_timeout for p in policies
            if p.connection_pool is not None and p.connection_pool.tcp_idle_timeout is not None]
    tunnels = {p.tunnel for p in policies}
    if len(tunnels) > 1:
        return None, None, (f"the TCP listener for {host!r} sends to destinations whose DestinationRules tunnel "
                            "differently (tunnel), and one listener has one tunnel: give them the same tunnel, or "
                            "route them from different upstreams")
    return (min(idle) if idle else None), next(iter(tunnels)), None


def tcp_proxies(listeners: Iterable, name: str) -> Iterator[tcp_proxy_pb2.TcpProxy]:
    """The tcp_proxy configs of every chain of the listener drafts called ``name``."""
    for listener in listeners:
        if listener.name != name:
            continue
        for chain in listener.filter_chains:
            for f in chain.filters:
                if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
                    yield f.config


def apply_tcp(proxy: tcp_proxy_pb2.TcpProxy, idle: float | None, tunnel: Tunnel | None) -> None:
    if idle is not None:
        proxy.idle_timeout.FromNanoseconds(int(round(idle * 1e9)))
    if tunnel is not None:
        target = f"[{tunnel.target_host}]" if ":" in tunnel.target_host else tunnel.target_host  # an IPv6 address
        proxy.tunneling_config.hostname = f"{target}:{tunnel.target_port}"
        proxy.tunneling_config.use_post = tunnel.protocol == "POST"


__all__ = ["destinations", "tcp_settings", "tcp_proxies", "apply_tcp"]
