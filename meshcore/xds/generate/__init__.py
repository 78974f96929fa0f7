"""Pure generation of one proxy's Envoy configuration from a MeshSnapshot, one module per xDS type.

:func:`generate_proxy` runs the per-type generators only; policies are applied afterwards by the composer
(:func:`meshcore.compose.build_proxy`). This package imports neither :mod:`meshcore.policies` nor
:mod:`meshcore.observe`: generation flows one way. No network, disk, clock or logging in here.
"""

from __future__ import annotations

from ...snapshot import MeshSnapshot, ProxyInfo
from .clusters import build_clusters
from .endpoints import build_endpoints
from .listeners import build_listeners
from .routes import build_routes
from .shared import Keyed, SharedResources
from .vocab import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

BuiltResources = dict[str, list]
"""Resources by type URL while plugins run: messages, except :class:`~.vocab.ListenerDraft` under LISTENER."""


def generate_proxy(snapshot: MeshSnapshot, proxy: ProxyInfo, shared: SharedResources | None = None) -> BuiltResources:
    """Every xDS type's resources for ``proxy``, before any policy plugin.

    Listeners are :class:`~.vocab.ListenerDraft` here (their network filters' configs still messages, for the
    plugins to edit); :func:`~.vocab.finish_listener` turns each into its Listener once the plugins are done.
    ``shared`` (optional) supplies the resources many proxies share (:mod:`.shared`).
    """
    return {
        LISTENER: build_listeners(snapshot, proxy),
        ROUTE: build_routes(snapshot, proxy),
        CLUSTER: build_clusters(snapshot, proxy, shared),
        ENDPOINT: build_endpoints(snapshot, proxy, shared),
        # Secrets hold private keys, which never leave the VM: the agent serves them to Envoy from files.
        SECRET: [],
    }


__all__ = [
    "generate_proxy", "build_listeners", "build_routes", "build_clusters", "build_endpoints",
    "LISTENER", "ROUTE", "CLUSTER", "ENDPOINT", "SECRET", "BuiltResources", "Keyed", "SharedResources",
]
