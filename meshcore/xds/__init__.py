"""xDS: pure generation (``generate``), validation, the per-proxy snapshot cache and the ADS server.

The names below are re-exported lazily (on first use): ``import meshcore.xds.generate`` must not load
grpc or the ADS server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .cache import ProxySnapshot, SnapshotCache
    from .server import AdsServicer, mtls_node_authorizer, serve_ads
    from .validate import publish, validate_snapshot

_LAZY = {
    "ProxySnapshot": ".cache", "SnapshotCache": ".cache",
    "AdsServicer": ".server", "mtls_node_authorizer": ".server", "serve_ads": ".server",
    "publish": ".validate", "validate_snapshot": ".validate",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["ProxySnapshot", "SnapshotCache", "AdsServicer", "mtls_node_authorizer", "serve_ads",
           "publish", "validate_snapshot"]
