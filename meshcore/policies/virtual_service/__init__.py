"""VirtualService, one folder as Kuma keeps a policy: schema, validation and cross-resource checks (:mod:`.schema`),
the typed spec validation's output parses into (:mod:`.spec`), the plugin (:mod:`.plugin`), its route compiler
(:mod:`.routes`: routes, faults, retries, mirrors, weighted tcp_proxy) and its golden data (``testdata/``).

The clusters it routes to come from :class:`meshcore.traffic.clusters.ClusterSet`, which it shares with
DestinationRule. The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull
in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import apply, check_fault_filter
    from .routes import FAULT_FILTER, http_fault, http_routes, route_match, weighted_tcp
    from .schema import KIND, KIND_NAME, service_for, validate_set
    from .spec import HttpRoute, VirtualServiceSpec, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "check_fault_filter": ".plugin", "FAULT_FILTER": ".routes", "http_fault": ".routes",
    "http_routes": ".routes", "route_match": ".routes", "weighted_tcp": ".routes", "KIND": ".schema",
    "KIND_NAME": ".schema", "service_for": ".schema", "validate_set": ".schema", "HttpRoute": ".spec",
    "VirtualServiceSpec": ".spec", "parse": ".spec",
})

__all__ = ["apply", "check_fault_filter", "FAULT_FILTER", "http_fault", "http_routes", "route_match", "weighted_tcp",
           "KIND", "KIND_NAME", "service_for", "validate_set", "HttpRoute", "VirtualServiceSpec", "parse"]
