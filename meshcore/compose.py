"""The composer: one proxy's Envoy configuration, generated then shaped by policy, in one direction.

    snapshot -> xds.generate (one generator per xDS type) -> policies (PLUGINS, in their declared order)
             -> one host per address (xds.generate.aggregate) -> publish

:func:`build_proxy` is the only place the two halves meet (:func:`shape_proxy` is its second half alone): :mod:`meshcore.xds.generate` knows nothing of
policies, and each plugin sees the generators' output plus whatever the plugins before it did. Pure: the
snapshot is read only through its accessors (``catalog``, ``resources_of``, ``settings``, ``trust_domain``,
``spiffe_id``), nothing is read from the network, disk or clock.
"""

from __future__ import annotations

from .policies.registry import apply_policies
from .snapshot import MeshSnapshot, ProxyInfo
from .xds.generate import BuiltResources, SharedResources, generate_proxy
from .xds.generate.aggregate import split_shared_addresses
from .xds.generate.vocab import LISTENER, finish_listener


def build_proxy(snapshot: MeshSnapshot, proxy: ProxyInfo, shared: SharedResources | None = None) -> dict[str, list]:
    """Every resource of ``proxy`` by type URL: the per-type generators' output with every policy applied.

    Listener filter configs stay messages while the plugins run; they are packed here, once, at the end
    (the guarantee of :mod:`meshcore.xds.generate.vocab`). With ``shared`` (a memo of resources many
    proxies share, :mod:`meshcore.xds.generate.shared`), the generators take those resources from it as
    copies the plugins may edit, and every copy no plugin changed comes back as the shared
    :class:`~meshcore.xds.cache.Prepared` entry (serialized once for all proxies); the output is the same
    config either way.
    """
    return shape_proxy(snapshot, proxy, generate_proxy(snapshot, proxy, shared), shared)


def shape_proxy(snapshot: MeshSnapshot, proxy: ProxyInfo, generated: BuiltResources,
                shared: SharedResources | None = None) -> dict[str, list]:
    """The second half of :func:`build_proxy`: every plugin over ``generated`` (edited in place), then each
    listener finished and (with ``shared``) every unedited shared copy replaced by its entry.

    ``build_proxy(s, p, m) == shape_proxy(s, p, generate_proxy(s, p, m), m)``. The engine calls the two
    halves apart, each against its own read-recording view, and keeps the generators' output: a change
    that reaches only what the plugins read (a mesh-wide policy) re-runs this half on a copy of it.
    """
    apply_policies(snapshot, proxy, generated)
    split_shared_addresses(generated)  # Envoy keeps one host per address in a cluster (xds.generate.aggregate)
    generated[LISTENER] = [finish_listener(draft) for draft in generated[LISTENER]]
    return generated if shared is None else shared.finish(generated)


__all__ = ["build_proxy", "generate_proxy", "shape_proxy"]
