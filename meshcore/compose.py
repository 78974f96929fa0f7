"""The composer: one proxy's Envoy configuration, generated then shaped by policy, in one direction.

    snapshot -> xds.generate (one generator per xDS type) -> policies (PLUGINS, in their declared order) -> publish

:func:`build_proxy` is the only place the two halves meet: :mod:`meshcore.xds.generate` knows nothing of
policies, and each plugin sees the generators' output plus whatever the plugins before it did. Pure: the
snapshot is read only through its accessors (``catalog``, ``resources_of``, ``settings``, ``trust_domain``,
``spiffe_id``), nothing is read from the network, disk or clock.
"""

from __future__ import annotations

from google.protobuf.message import Message

from .policies import apply_policies
from .snapshot import MeshSnapshot, ProxyInfo
from .xds.generate import generate_proxy


def build_proxy(snapshot: MeshSnapshot, proxy: ProxyInfo) -> dict[str, list[Message]]:
    """Every resource of ``proxy`` by type URL: the per-type generators' output with every policy applied."""
    resources = generate_proxy(snapshot, proxy)
    apply_policies(snapshot, proxy, resources)
    return resources


__all__ = ["build_proxy"]
