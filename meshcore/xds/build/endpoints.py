"""Endpoints: the healthy instances of every upstream this proxy reaches (each one's mesh address)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ... import naming
from ...snapshot import MeshSnapshot, ProxyInfo
from . import _common as c


def load_assignment(snapshot: MeshSnapshot, upstream: str, datacenter: str | None) -> endpoint_pb2.ClusterLoadAssignment:
    by_dc: dict[str, list] = {}
    for inst in snapshot.catalog.healthy(upstream):
        if datacenter and inst.datacenter != datacenter:
            continue
        by_dc.setdefault(inst.datacenter, []).append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(inst.mesh_address, inst.mesh_port)),
                health_status=health_check_pb2.HEALTHY,
            )
        )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=naming.upstream_endpoints(upstream, datacenter),
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(locality=base_pb2.Locality(zone=dc), lb_endpoints=eps)
            for dc, eps in sorted(by_dc.items())
        ],
    )


def build_endpoints(snapshot: MeshSnapshot, proxy: ProxyInfo) -> list[endpoint_pb2.ClusterLoadAssignment]:
    wanted = sorted({(up.destination_name, up.datacenter or "") for _, up in c.outbound_bindings(snapshot, proxy)})
    return [load_assignment(snapshot, name, dc or None) for name, dc in wanted]
