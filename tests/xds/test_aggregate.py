"""One Envoy host per address (meshcore.xds.generate.aggregate): assignments cut into aggregate children."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2

from meshcore.xds.generate import vocab as c
from meshcore.xds.generate.aggregate import split_shared_addresses
from meshcore.xds.generate.vocab import CLUSTER, ENDPOINT


def _ep(address: str, port: int, sni: str | None = None) -> endpoint_components_pb2.LbEndpoint:
    ep = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(address, port)))
    if sni:
        meta = struct_pb2.Struct()
        meta.update({"mesh-gateway-sni": sni})
        ep.metadata.filter_metadata["envoy.transport_socket_match"].CopyFrom(meta)
    return ep


def _cla(name: str, *levels: list[tuple[str, int, str | None]]) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for priority, eps in enumerate(levels):
        cla.endpoints.add(priority=priority, lb_endpoints=[_ep(*e) for e in eps])
    return cla


def _eds(name: str, service: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.service_name = service
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return cluster


def _shape(cla) -> list[list[tuple[int, str, int, str]]]:
    return [[(g.priority, e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value,
              dict(e.metadata.filter_metadata["envoy.transport_socket_match"]).get("mesh-gateway-sni", ""))
             for e in g.lb_endpoints] for g in cla.endpoints]


def test_no_repeat_no_change():
    cla = _cla("a", [("10.0.0.1", 1, None)], [("10.0.0.9", 8443, "a.dc2")])
    res = {CLUSTER: [_eds("out:a", "a")], ENDPOINT: [cla]}
    before = cla.SerializeToString()
    split_shared_addresses(res)
    assert [x.name for x in res[CLUSTER]] == ["out:a"] and res[ENDPOINT][0].SerializeToString() == before


def test_another_sni_at_a_later_priority_is_a_second_child_and_the_same_one_is_dropped():
    cla = _cla("a", [("10.0.0.1", 1, None)], [("10.0.0.9", 8443, "a.dc2")],
               [("10.0.0.9", 8443, "a.dc2"), ("10.0.0.1", 1, None)],  # nothing new: dropped, level gone
               [("10.0.0.9", 8443, "b.dc2"), ("10.0.0.9", 8443, "b.dc3")])  # a repeat within one level: first kept
    res = {CLUSTER: [_eds("out:a", "a"), _eds("out:a|v1", "a"), _eds("out:other", "o")], ENDPOINT: [cla]}
    split_shared_addresses(res)
    names = [x.name for x in res[CLUSTER]]
    assert names == ["out:a~0", "out:a~1", "out:a", "out:a|v1~0", "out:a|v1~1", "out:a|v1", "out:other"]
    by_name = {x.cluster_name: x for x in res[ENDPOINT]}
    assert _shape(by_name["a~0"]) == [[(0, "10.0.0.1", 1, "")], [(1, "10.0.0.9", 8443, "a.dc2")]]
    assert _shape(by_name["a~1"]) == [[(0, "10.0.0.9", 8443, "b.dc2")]]
    assert set(by_name) == {"a~0", "a~1"}
    top = res[CLUSTER][2]
    assert top.cluster_type.name == "envoy.clusters.aggregate" and not top.HasField("eds_cluster_config")


def test_a_repeat_within_one_priority_keeps_the_first_and_compacts():
    cla = _cla("a", [("10.0.0.9", 8443, "a.dc2"), ("10.0.0.9", 8443, "a.dc3")])
    res = {CLUSTER: [_eds("out:a", "a")], ENDPOINT: [cla]}
    split_shared_addresses(res)
    assert [x.name for x in res[CLUSTER]] == ["out:a"]
    assert _shape(res[ENDPOINT][0]) == [[(0, "10.0.0.9", 8443, "a.dc2")]]
