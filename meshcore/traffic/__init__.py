"""Traffic management: VirtualService compiled to Envoy config, the clusters it and DestinationRule share,
and the workflows on top. DestinationRule's own helpers live in :mod:`meshcore.policies.destination_rule`.

Public API::

    ClusterSet(snapshot, proxy, resources).ensure(source, host, subset) -> cluster name   # clusters.py
    http_routes(virtual_service, cluster_for, hash_for, default_timeout) -> [Route]        # routes.py
    split / route / switch / rollback (service, ..., dr_doc, vs_doc) -> Plan               # workflows.py
"""

from importlib import import_module
from typing import Any

# Lazy: ``meshctl traffic`` needs only the workflows; the Envoy compilers pull in every xDS proto.
_WHERE = {
    "ClusterSet": "clusters", "MissingSubset": "clusters", "subset_assignment": "clusters",
    "FAULT_FILTER": "routes", "http_fault": "routes", "http_routes": "routes", "route_match": "routes",
    "weighted_tcp": "routes",
    "ACTIVE_LABEL": "workflows", "PREVIOUS_LABEL": "workflows", "Plan": "workflows", "describe": "workflows",
    "parse_spec": "workflows", "parse_weights": "workflows", "rollback": "workflows", "route": "workflows",
    "split": "workflows", "switch": "workflows",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVE_LABEL",
    "FAULT_FILTER",
    "PREVIOUS_LABEL",
    "ClusterSet",
    "MissingSubset",
    "Plan",
    "describe",
    "http_fault",
    "http_routes",
    "parse_spec",
    "parse_weights",
    "rollback",
    "route",
    "route_match",
    "split",
    "subset_assignment",
    "switch",
    "weighted_tcp",
]
