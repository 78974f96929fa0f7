"""Routes: inbound to the local app, outbound to each upstream's cluster (HTTP services only)."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from ... import naming
from ...snapshot import MeshSnapshot, ProxyInfo
from . import vocab as c

DEFAULT_ROUTE_TIMEOUT_S = 15.0


def _single_route(name: str, vhost: str, cluster: str, timeout: float | None) -> route_pb2.RouteConfiguration:
    action = rc.RouteAction(cluster=cluster)
    if timeout is not None:
        action.timeout.CopyFrom(c.seconds(timeout))
    route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[rc.VirtualHost(name=vhost, domains=["*"], routes=[route])],
        validate_clusters=wrappers_pb2.BoolValue(value=False),
    )


def build_routes(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[route_pb2.RouteConfiguration]:
    routes = []
    for inst in c.sidecar_instances(snapshot, proxy):
        if inst.protocol == "tcp":
            continue
        # The caller's route owns the timeout; inbound passes the request through as long as it lasts.
        routes.append(_single_route(naming.inbound_route(inst.id), inst.service, naming.local_app_cluster(inst.id), 0))
    for src, up in c.outbound_bindings(snapshot, proxy):
        if c.upstream_protocol(snapshot, up) == "tcp":
            continue
        routes.append(_single_route(
            naming.outbound_route(up.destination_name, up.local_bind_port), up.destination_name,
            naming.upstream_cluster(up.destination_name, src.service), DEFAULT_ROUTE_TIMEOUT_S,
        ))
    return sorted(routes, key=lambda r: r.name)
