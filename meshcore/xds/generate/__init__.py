"""Pure generation of one proxy's Envoy configuration from a MeshSnapshot.

``build_proxy(snapshot, proxy)`` runs one builder per xDS type, then every policy plugin in
its fixed order (see :mod:`meshcore.policies`). No network, disk, clock or logging in here.
"""

from __future__ import annotations

from ...snapshot import MeshSnapshot, ProxyInfo
from .clusters import build_clusters
from .endpoints import build_endpoints
from .listeners import build_listeners
from .routes import build_routes
from .vocab import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

BuiltResources = dict[str, list]


def build_proxy(snapshot: MeshSnapshot, proxy: ProxyInfo) -> BuiltResources:
    from ...policies import apply_policies

    resources: BuiltResources = {
        LISTENER: build_listeners(snapshot, proxy),
        ROUTE: build_routes(snapshot, proxy),
        CLUSTER: build_clusters(snapshot, proxy),
        ENDPOINT: build_endpoints(snapshot, proxy),
        # Secrets hold private keys, which never leave the VM: the agent serves them to Envoy from files.
        SECRET: [],
    }
    apply_policies(snapshot, proxy, resources)
    return resources


__all__ = [
    "build_proxy", "build_listeners", "build_routes", "build_clusters", "build_endpoints",
    "LISTENER", "ROUTE", "CLUSTER", "ENDPOINT", "SECRET", "BuiltResources",
]
