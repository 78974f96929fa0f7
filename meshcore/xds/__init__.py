"""xDS: pure generation (``build``), validation, the per-proxy snapshot cache and the ADS server."""

from .cache import ProxySnapshot, SnapshotCache
from .server import AdsServicer, mtls_node_authorizer, serve_ads
from .validate import publish, validate_snapshot

__all__ = ["ProxySnapshot", "SnapshotCache", "AdsServicer", "mtls_node_authorizer", "serve_ads",
           "publish", "validate_snapshot"]
