"""Small, valid xDS resource sets for the xds tests (built with the real proto classes)."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def socket(port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port))


def http_filter_chain(route_name: str) -> listener_components_pb2.FilterChain:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=route_name.replace(":", "_"),
        rds=hcm_pb2.Rds(route_config_name=route_name, config_source=ads_source()),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
    )
    return listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                                typed_config=pack(hcm))]
    )


def listener(name: str, port: int, route_name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(name=name, address=socket(port), filter_chains=[http_filter_chain(route_name)])


def route_config(name: str, cluster: str, body: str) -> route_pb2.RouteConfiguration:
    """``/upstream`` goes to ``cluster``; everything else answers 200 ``body`` directly."""
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/upstream"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    ),
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        direct_response=route_components_pb2.DirectResponseAction(
                            status=200, body={"inline_string": body}
                        ),
                    ),
                ],
            )
        ],
    )


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout={"seconds": 1},
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
    )


def endpoints(cluster: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket(port)))
                ]
            )
        ],
    )


def small_snapshot(
    listener_port: int = 15001, body: str = "v1", upstream_port: int = 18080
) -> dict[str, list[Message]]:
    """One HTTP listener -> RDS route config -> EDS cluster -> endpoints; valid and Envoy-loadable."""
    return {
        LISTENER: [listener("inbound:web", listener_port, "inbound:web")],
        ROUTE: [route_config("inbound:web", "outbound:backend", body)],
        CLUSTER: [eds_cluster("outbound:backend")],
        ENDPOINT: [endpoints("outbound:backend", upstream_port)],
    }
