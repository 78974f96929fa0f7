"""Traffic management: the clusters VirtualService and DestinationRule share, and the workflows on top.

Each kind's own Envoy helpers live in its policy folder: :mod:`meshcore.policies.destination_rule` (traffic
policy on clusters, locality failover) and :mod:`meshcore.policies.virtual_service` (routes, faults, retries,
mirrors, weighted tcp_proxy).

Public API::

    ClusterSet(snapshot, proxy, resources).ensure(source, host, subset) -> cluster name   # clusters.py
    split / route / switch / rollback (service, ..., dr_doc, vs_doc) -> Plan               # workflows.py
"""

from importlib import import_module
from typing import Any

# Lazy: ``meshctl traffic`` needs only the workflows; ClusterSet pulls in the generators and every xDS proto.
_WHERE = {
    "ClusterSet": "clusters", "MissingSubset": "clusters", "subset_assignment": "clusters",
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
    "PREVIOUS_LABEL",
    "ClusterSet",
    "MissingSubset",
    "Plan",
    "describe",
    "parse_spec",
    "parse_weights",
    "rollback",
    "route",
    "split",
    "subset_assignment",
    "switch",
]
