"""Delta ADS (DeltaAggregatedResources) over real gRPC on loopback, and the server at fleet size."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServicer, allow_any_node, serve_ads
from meshcore.xds.validate import publish
from tests.xds._ads import WAIT, AdsClient, DeltaClient, bad_cluster, check_nack_books, serving
from tests.xds._snapshots import eds_cluster, endpoints, small_snapshot


def _wait(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def delta():
    cache = SnapshotCache()
    servicer = AdsServicer(cache, allow_any_node, max_streams_per_identity=3)
    with serving(servicer, DeltaClient) as (connect, port):
        yield cache, servicer, connect, port


def resources(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def two_upstreams(port: int = 18080, other_port: int = 18090) -> dict:
    res = small_snapshot(upstream_port=port)
    res[CLUSTER].append(eds_cluster("outbound:other"))
    other = endpoints("outbound:other", 1)
    other.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value = other_port
    res[ENDPOINT].append(other)
    return res


def subscribe_all(client: DeltaClient, eds=("outbound:backend",)) -> dict[str, discovery_pb2.DeltaDiscoveryResponse]:
    """Subscribe like Envoy (CDS and LDS wildcard, EDS and RDS by name), ACK everything."""
    got = {}
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, eds), (LISTENER, ()), (ROUTE, ("inbound:web",))):
        client.send(type_url, subscribe=names)
        got[type_url] = client.recv()
        assert got[type_url].type_url == type_url
        client.ack(got[type_url])
    return got


def metric(servicer: AdsServicer, name: str, labels: dict | None = None) -> float:
    return servicer.registry.get_sample_value(name, labels or {}) or 0.0


def test_wildcard_and_named_subscriptions_carry_per_resource_versions(delta):
    cache, servicer, connect, _ = delta
    snap = publish(cache, "vm1", two_upstreams())
    client = connect()
    got = subscribe_all(client)
    assert resources(got[CLUSTER]) == snap.resource_versions(CLUSTER)  # wildcard: every cluster
    assert resources(got[ENDPOINT]) == {"outbound:backend": snap.resource_versions(ENDPOINT)["outbound:backend"]}
    assert got[CLUSTER].system_version_info == snap.versions[CLUSTER]
    assert got[ROUTE].resources[0].resource.type_url == ROUTE
    assert cache.wait_synced("vm1", WAIT)
    client.expect_nothing(0.3)  # ACKs are not answered
    status = cache.status("vm1")
    assert status["acked"] == {t: snap.versions[t] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    assert status["protocols"] == ["delta"]
    assert metric(servicer, "meshcore_xds_streams", {"protocol": "delta"}) == 1
    assert metric(servicer, "meshcore_xds_acks_total", {"type": "eds"}) == 1


def test_endpoint_only_change_sends_only_the_changed_cla(delta):
    cache, _, connect, _ = delta
    publish(cache, "vm1", two_upstreams())
    client = connect()
    subscribe_all(client, eds=("outbound:backend", "outbound:other"))
    assert cache.wait_synced("vm1", WAIT)
    newer = publish(cache, "vm1", two_upstreams(other_port=18091))
    eds = client.recv()
    assert eds.type_url == ENDPOINT and list(resources(eds)) == ["outbound:other"]
    assert resources(eds)["outbound:other"] == newer.resource_versions(ENDPOINT)["outbound:other"]
    assert not eds.removed_resources
    cla = endpoint_pb2.ClusterLoadAssignment()
    eds.resources[0].resource.Unpack(cla)
    assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 18091
    client.expect_nothing(0.3)  # no other type, no other CLA
    client.ack(eds)
    assert cache.wait_synced("vm1", WAIT)


def test_a_change_outside_the_subscription_sends_nothing_and_stays_synced(delta):
    cache, _, connect, _ = delta
    publish(cache, "vm1", two_upstreams())
    client = connect()
    subscribe_all(client)  # EDS: backend only
    assert cache.wait_synced("vm1", WAIT)
    newer = publish(cache, "vm1", two_upstreams(other_port=18099))  # only "other" changes
    client.expect_nothing(0.4)
    _wait(lambda: cache.status("vm1")["acked"].get(ENDPOINT) == newer.versions[ENDPOINT], what="the new EDS version")
    assert cache.synced("vm1")


def test_unsubscribe_stops_updates_and_subscribe_again_resends(delta):
    cache, _, connect, _ = delta
    publish(cache, "vm1", two_upstreams())
    client = connect()
    subscribe_all(client, eds=("outbound:backend", "outbound:other"))
    client.send(ENDPOINT, unsubscribe=["outbound:other"])
    client.expect_nothing(0.3)
    publish(cache, "vm1", two_upstreams(other_port=18092))
    client.expect_nothing(0.4)
    assert cache.wait_synced("vm1", WAIT)
    client.send(ENDPOINT, subscribe=["outbound:other"])
    again = client.recv()
    assert list(resources(again)) == ["outbound:other"]


def test_removed_resources_and_missing_names(delta):
    cache, _, connect, _ = delta
    publish(cache, "vm1", two_upstreams())
    client = connect()
    subscribe_all(client, eds=("outbound:backend", "outbound:other"))
    fewer = small_snapshot()  # "outbound:other" cluster and endpoints are gone
    publish(cache, "vm1", fewer)
    cds = client.recv()
    assert cds.type_url == CLUSTER and list(cds.removed_resources) == ["outbound:other"] and not cds.resources
    client.ack(cds)
    eds = client.recv()
    assert eds.type_url == ENDPOINT and list(eds.removed_resources) == ["outbound:other"]
    client.ack(eds)
    # A name that does not exist is answered as removed at once, and only once.
    client.send(ENDPOINT, subscribe=["outbound:nowhere"])
    missing = client.recv()
    assert list(missing.removed_resources) == ["outbound:nowhere"] and not missing.resources
    client.ack(missing)
    client.expect_nothing(0.3)
    assert cache.wait_synced("vm1", WAIT)


def _endpoints_behind(client: DeltaClient) -> discovery_pb2.DeltaDiscoveryResponse:
    """The (unchanged) endpoints that follow a CDS response updating the cluster (see the warming tests)."""
    eds = client.recv()
    assert eds.type_url == ENDPOINT and list(resources(eds)) == ["outbound:backend"]
    return eds


def test_nack_keeps_the_last_good_config_and_is_offered_again_with_backoff(delta, monkeypatch, caplog):
    import meshcore.xds.server as server

    monkeypatch.setattr(server, "NACK_RESEND_BASE_S", 0.3)
    cache, servicer, connect, _ = delta
    good = publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)
    bad = publish(cache, "vm1", bad_cluster(small_snapshot()))
    cds = client.recv()
    assert cds.system_version_info == bad.versions[CLUSTER]
    client.ack(_endpoints_behind(client))
    with caplog.at_level("WARNING", logger="meshcore.xds.server"):
        client.send(CLUSTER, nonce=cds.nonce, error="cluster: bad timeout")
        client.expect_nothing(0.15)
        again = client.recv()  # the backoff resend: the same resources, a new nonce
        client.ack(_endpoints_behind(client))
    assert resources(again) == resources(cds) and again.nonce != cds.nonce
    check_nack_books(cache, servicer, caplog.records, good, bad)
    client.send(CLUSTER, nonce=again.nonce, error="cluster: bad timeout")
    client.expect_nothing(0.45)  # the second retry waits twice as long
    # Publishing the last good config again: the proxy holds it already, so nothing is sent and no
    # resend of the rejected version follows; the proxy counts as running the current config.
    fixed = publish(cache, "vm1", small_snapshot())
    assert fixed.versions[CLUSTER] == good.versions[CLUSTER]
    assert cache.wait_synced("vm1", WAIT)
    client.expect_nothing(1.0)
    # A different fix is pushed at once.
    other = small_snapshot()
    other[CLUSTER][0].connect_timeout.seconds = 3
    third = publish(cache, "vm1", other)
    cds2 = client.recv(timeout=2)
    assert cds2.system_version_info == third.versions[CLUSTER]
    client.ack(cds2)
    client.ack(_endpoints_behind(client))
    assert cache.wait_synced("vm1", WAIT)


def test_reconnect_with_initial_versions_sends_only_what_differs(delta):
    cache, _, connect, _ = delta
    snap = publish(cache, "vm1", two_upstreams())
    first = connect()
    got = subscribe_all(first, eds=("outbound:backend", "outbound:other"))
    held_clusters = resources(got[CLUSTER])
    held_endpoints = resources(got[ENDPOINT])
    first.close()
    newer = publish(cache, "vm1", two_upstreams(port=18081))  # backend's endpoints change meanwhile

    client = connect()
    client.send(CLUSTER, initial={**held_clusters, "outbound:retired": "0123456789abcdef"})
    cds = client.recv()
    assert not cds.resources and list(cds.removed_resources) == ["outbound:retired"]
    client.ack(cds)
    client.send(ENDPOINT, subscribe=["outbound:backend", "outbound:other"], initial=held_endpoints)
    eds = client.recv()
    assert list(resources(eds)) == ["outbound:backend"]
    assert resources(eds)["outbound:backend"] == newer.resource_versions(ENDPOINT)["outbound:backend"]
    assert resources(eds)["outbound:backend"] != snap.resource_versions(ENDPOINT)["outbound:backend"]
    client.ack(eds)
    # Everything it holds is current: nothing is sent, and it counts as running this version.
    client.send(LISTENER, initial=resources(got[LISTENER]))
    client.send(ROUTE, subscribe=["inbound:web"], initial=resources(got[ROUTE]))
    client.expect_nothing(0.4)
    assert cache.wait_synced("vm1", WAIT)


def test_updated_clusters_get_their_unchanged_endpoints_again(delta):
    cache, _, connect, _ = delta
    first = publish(cache, "vm1", small_snapshot())
    client = connect()
    got = subscribe_all(client)
    changed = small_snapshot()
    changed[CLUSTER][0].connect_timeout.seconds = 7
    second = publish(cache, "vm1", changed)
    assert second.versions[ENDPOINT] == first.versions[ENDPOINT]
    cds = client.recv()
    assert cds.type_url == CLUSTER and list(resources(cds)) == ["outbound:backend"]
    # Right behind the clusters, before their ACK: on delta, Envoy ACKs an updated cluster only once it
    # has warmed, i.e. once it has its endpoints (waiting for the ACK stalled it for the 15 s fetch timeout).
    eds = client.recv()
    assert eds.type_url == ENDPOINT and resources(eds) == resources(got[ENDPOINT]) and eds.nonce != got[ENDPOINT].nonce
    client.ack(cds)
    client.ack(eds)
    client.expect_nothing(0.3)  # the ACKs are not answered: the endpoints went once
    # A new cluster is not warming an old one: its endpoints come with its own subscription only.
    more = two_upstreams()
    more[CLUSTER][0].connect_timeout.seconds = 7
    publish(cache, "vm1", more)
    cds = client.recv()
    assert list(resources(cds)) == ["outbound:other"]
    client.ack(cds)
    client.expect_nothing(0.3)


def test_streams_per_identity_are_bounded(delta):
    cache, servicer, connect, _ = delta  # max_streams_per_identity=3
    publish(cache, "vm1", small_snapshot())
    held = [connect(), connect(cls=AdsClient), connect()]
    for client in held:
        client.send(CLUSTER)
        client.recv()
    extra = connect()
    extra.send(CLUSTER)
    with pytest.raises(grpc.RpcError) as info:
        extra.recv()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node:vm1 already holds 3 open ADS streams" in info.value.details()
    assert "max_streams_per_identity=3" in info.value.details()
    assert metric(servicer, "meshcore_xds_streams_refused_total", {"reason": "per_identity"}) == 1
    other = connect("vm2")  # another identity is not affected
    other.send(CLUSTER)
    publish(cache, "vm2", small_snapshot())
    assert other.recv().type_url == CLUSTER
    held[0].close()  # a closed stream frees its slot
    _wait(lambda: cache.status("vm1")["connected_streams"] == 2, what="the stream to close")
    again = connect()
    again.send(CLUSTER)
    assert again.recv().type_url == CLUSTER


def test_the_global_stream_limit_and_the_first_request_deadline():
    cache = SnapshotCache()
    publish(cache, "vm1", small_snapshot())
    # the deadline is long enough that the silent stream still holds the slot when the extra one opens, on a
    # loaded machine too; the extra one opens only once the server counts the silent one
    servicer = AdsServicer(cache, allow_any_node, max_streams=1, first_request_timeout=3)
    with serving(servicer, DeltaClient) as (connect, _):
        silent = connect()  # opens a stream and never asks for anything
        deadline = time.monotonic() + WAIT
        while metric(servicer, "meshcore_xds_streams", {"protocol": "delta"}) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = connect("vm2")
        extra.send(CLUSTER)
        with pytest.raises(grpc.RpcError) as info:
            extra.recv()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams=1" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            silent.recv()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no ADS request within 3s" in info.value.details()
        assert metric(servicer, "meshcore_xds_streams_refused_total", {"reason": "max_streams"}) == 1
        again = connect()  # the slot is free again
        again.send(CLUSTER)
        assert again.recv().type_url == CLUSTER


def test_a_stream_that_stops_reading_does_not_delay_the_others(delta):
    cache, _, connect, port = delta
    big = small_snapshot()
    big[ENDPOINT] = [endpoints("outbound:backend", 5000)]  # ~100 KB: a few fill the stream's window
    publish(cache, "stuck", big)
    hold = threading.Event()
    node = base_pb2.Node(id="stuck")

    def stuck_requests():
        yield discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=node)
        yield discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=["outbound:backend"])
        hold.wait(60)

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stuck_call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(stuck_requests())
    try:
        publish(cache, "vm1", small_snapshot())
        healthy = connect()
        subscribe_all(healthy)
        for i in range(20):  # the stuck proxy's config changes again and again; it reads nothing
            address = big[ENDPOINT][0].endpoints[0].lb_endpoints[0].endpoint.address.socket_address
            address.port_value = 20000 + i
            publish(cache, "stuck", big)
            publish(cache, "vm1", small_snapshot(upstream_port=19000 + i))
            eds = healthy.recv()
            assert eds.type_url == ENDPOINT
            healthy.ack(eds)
        assert cache.wait_synced("vm1", WAIT)
        assert cache.status("stuck")["connected_streams"] == 1
    finally:
        hold.set()
        stuck_call.cancel()
        channel.close()


# --- fleet size ------------------------------------------------------------------------------------

def test_600_concurrent_streams_are_served_without_a_thread_each():
    cache = SnapshotCache()
    nodes = [f"vm{i}" for i in range(600)]
    from meshcore.xds.cache import ProxySnapshot

    snap = ProxySnapshot.of(small_snapshot())
    for node in nodes:
        cache.set(node, snap)
    servicer = AdsServicer(cache, allow_any_node)
    server, port = serve_ads(servicer, "127.0.0.1:0", None)
    threads_before = threading.active_count()
    answered: list[str] = []
    stop = threading.Event()

    async def one(channel, node_id: str, delta: bool) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = base_pb2.Node(id=node_id)
        if delta:
            call = stub.DeltaAggregatedResources()
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=node))
        else:
            call = stub.StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        response = await call.read()
        if delta:
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=response.nonce))
        else:
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=response.version_info,
                                                            response_nonce=response.nonce))
        answered.append(node_id)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        call.cancel()

    async def run() -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(6)]
        await asyncio.gather(*(one(channels[i % 6], n, i % 2 == 0) for i, n in enumerate(nodes)))
        for channel in channels:
            await channel.close()

    clients = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    clients.start()
    try:
        _wait(lambda: len(answered) == 600, timeout=120, what="600 streams to be answered")
        _wait(lambda: len(cache.connected_nodes()) == 600, timeout=30, what="600 connected nodes")
        assert threading.active_count() - threads_before < 20  # the client loop and grpc's own few
        assert metric(servicer, "meshcore_xds_streams", {"protocol": "delta"}) == 300
        assert metric(servicer, "meshcore_xds_streams", {"protocol": "sotw"}) == 300
    finally:
        stop.set()
        clients.join(30)
        server.stop(0).wait(WAIT)
