"""Traffic management: DestinationRule and VirtualService compiled to Envoy config, and the workflows on top.

Public API::

    ClusterSet(snapshot, proxy, resources).ensure(source, host, subset) -> cluster name   # clusters.py
    apply_policy(cluster, traffic_policy); route_hash_policies(traffic_policy)
    http_routes(virtual_service, cluster_for, hash_for, default_timeout) -> [Route]        # routes.py
    split / route / switch / rollback (service, ..., dr_doc, vs_doc) -> Plan               # workflows.py
"""

from importlib import import_module
from typing import Any

# Lazy: ``meshctl traffic`` needs only the workflows; the Envoy compilers pull in every xDS proto.
_WHERE = {
    "ClusterSet": "clusters", "MissingSubset": "clusters", "apply_policy": "clusters",
    "route_hash_policies": "clusters", "subset_assignment": "clusters", "tcp_hash_policies": "clusters",
    "FAULT_FILTER": "routes", "http_fault": "routes", "http_routes": "routes", "route_match": "routes",
    "weighted_tcp": "routes",
    "apply_locality": "locality", "apply_locality_named": "locality",
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
    "apply_locality",
    "apply_locality_named",
    "apply_policy",
    "describe",
    "http_fault",
    "http_routes",
    "parse_spec",
    "parse_weights",
    "rollback",
    "route",
    "route_hash_policies",
    "route_match",
    "split",
    "subset_assignment",
    "switch",
    "tcp_hash_policies",
    "weighted_tcp",
]
