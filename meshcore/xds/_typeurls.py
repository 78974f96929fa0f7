"""xDS type URLs served by meshcore, their proto classes and the order updates go out in.

Envoy's xDS protocol docs ("Eventual consistency considerations") ask a management server to send
CDS before EDS and LDS before RDS so that a proxy never sees a reference to something it does not
know yet: clusters, then endpoints, then listeners, then routes. Secrets come last: each one is
requested by a cluster or listener that references it, so it cannot be needed earlier.
"""

from __future__ import annotations

from google.protobuf.message import Message

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

_PREFIX = "type.googleapis.com/"

LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Push order on a snapshot change (see module docstring).
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: Every type meshcore serves.
SERVED_TYPES: frozenset[str] = frozenset(PUSH_ORDER)

#: Types where an empty ``resource_names`` list in a state-of-the-world request means "everything".
WILDCARD_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})

#: The proto class each type URL carries.
MESSAGE_CLASS: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}

#: Short names used in metrics labels and logs (``lds``, ``rds``, ...).
SHORT_NAME: dict[str, str] = {
    LISTENER: "lds",
    ROUTE: "rds",
    CLUSTER: "cds",
    ENDPOINT: "eds",
    SECRET: "sds",
}


def short_name(type_url: str) -> str:
    """``lds``/``rds``/... for a served type; the bare message name for anything else."""
    return SHORT_NAME.get(type_url, type_url.rsplit(".", 1)[-1])


def resource_name(message: Message) -> str:
    """Name Envoy knows a resource by: ``cluster_name`` for a ClusterLoadAssignment, ``name`` otherwise."""
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return message.cluster_name
    return message.name
