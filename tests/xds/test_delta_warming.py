"""Cluster warming on delta ADS: an updated EDS cluster gets its (unchanged) endpoints right behind it.

Envoy keeps an updated EDS cluster warming until it receives that cluster's ClusterLoadAssignment. On a
delta stream it does not subscribe to the name again (it is subscribed already) and it ACKs the clusters
only once they have warmed, so a server that waits for the CDS ACK before re-sending the endpoints leaves
the cluster warming until Envoy's initial fetch timeout (15 s). A real Envoy checks both protocols.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServicer, allow_any_node, serve_ads
from meshcore.xds.validate import publish
from tests.xds._ads import WAIT, DeltaClient, serving
from tests.xds._envoy import ads_bootstrap, free_port, running_envoy
from tests.xds._snapshots import small_snapshot


@pytest.fixture
def delta():
    cache = SnapshotCache()
    with serving(AdsServicer(cache, allow_any_node), DeltaClient) as (connect, _):
        yield cache, connect


def names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in response.resources]


def subscribe_all(client: DeltaClient) -> dict[str, discovery_pb2.DeltaDiscoveryResponse]:
    got = {}
    for type_url, subscribe in ((CLUSTER, ()), (ENDPOINT, ("outbound:backend",)), (LISTENER, ()),
                                (ROUTE, ("inbound:web",))):
        client.send(type_url, subscribe=subscribe)
        got[type_url] = client.recv()
        client.ack(got[type_url])
    return got


def updated(seconds: int) -> dict:
    """The small snapshot with its cluster's settings changed, its endpoints not."""
    res = small_snapshot()
    res[CLUSTER][0].connect_timeout.seconds = seconds
    return res


def test_endpoints_in_flight_when_the_cluster_changes_follow_their_ack(delta):
    cache, connect = delta
    publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)
    moved = small_snapshot(upstream_port=18081)  # an endpoint change first: EDS in flight, not ACKed
    publish(cache, "vm1", moved)
    eds = client.recv()
    assert eds.type_url == ENDPOINT
    both = small_snapshot(upstream_port=18081)
    both[CLUSTER][0].connect_timeout.seconds = 7
    publish(cache, "vm1", both)
    cds = client.recv()
    assert cds.type_url == CLUSTER and names(cds) == ["outbound:backend"]
    client.expect_nothing(0.3)  # one EDS response in flight at a time
    client.ack(eds)
    again = client.recv()  # the warming cluster's endpoints, although the proxy holds this version
    assert again.type_url == ENDPOINT and names(again) == ["outbound:backend"]
    assert again.resources[0].version == eds.resources[0].version
    client.ack(again)
    client.ack(cds)
    client.expect_nothing(0.3)


def test_a_nacked_resend_is_owed_again(delta, monkeypatch):
    import meshcore.xds.server as server

    monkeypatch.setattr(server, "NACK_RESEND_BASE_S", 0.2)
    cache, connect = delta
    publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)
    publish(cache, "vm1", updated(7))
    cds = client.recv()
    eds = client.recv()
    assert eds.type_url == ENDPOINT
    client.send(ENDPOINT, nonce=eds.nonce, error="endpoints: rejected")
    again = client.recv(timeout=WAIT)  # after the backoff: the same endpoints, although held before
    assert again.type_url == ENDPOINT and names(again) == ["outbound:backend"] and again.nonce != eds.nonce
    client.ack(again)
    client.ack(cds)
    assert cache.wait_synced("vm1", WAIT)


def test_a_reconnect_gets_the_endpoints_of_clusters_updated_before_eds_was_subscribed(delta):
    cache, connect = delta
    publish(cache, "vm1", small_snapshot())
    first = connect()
    got = subscribe_all(first)
    held = {t: {r.name: r.version for r in got[t].resources} for t in got}
    first.close()
    publish(cache, "vm1", updated(7))  # the cluster changes while the proxy is away, its endpoints do not

    client = connect()
    client.send(CLUSTER, initial=held[CLUSTER])
    cds = client.recv()
    assert names(cds) == ["outbound:backend"]
    client.send(ENDPOINT, subscribe=["outbound:backend"], initial=held[ENDPOINT])
    eds = client.recv()  # held already, but its cluster is warming
    assert eds.type_url == ENDPOINT and names(eds) == ["outbound:backend"]
    assert eds.resources[0].version == held[ENDPOINT]["outbound:backend"]
    client.ack(eds)
    client.ack(cds)
    client.send(LISTENER, initial=held[LISTENER])
    client.send(ROUTE, subscribe=["inbound:web"], initial=held[ROUTE])
    client.expect_nothing(0.3)
    assert cache.wait_synced("vm1", WAIT)


def test_a_cluster_that_did_not_change_gets_no_endpoints(delta):
    cache, connect = delta
    res = small_snapshot()
    publish(cache, "vm1", res)
    client = connect()
    subscribe_all(client)
    res = small_snapshot()
    res[LISTENER][0].per_connection_buffer_limit_bytes.value = 4096  # listeners only
    publish(cache, "vm1", res)
    lds = client.recv()
    assert lds.type_url == LISTENER
    client.ack(lds)
    client.expect_nothing(0.3)


# --- a real Envoy --------------------------------------------------------------------------------

def _admin(admin_port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=2) as resp:
        return resp.read()


def _stats(admin_port: int, pattern: str) -> dict[str, int]:
    text = _admin(admin_port, f"/stats?filter={pattern}").decode()
    return {name: int(value) for name, value in (line.split(": ", 1) for line in text.strip().splitlines())}


def _applied(admin_port: int, cache: SnapshotCache, updates: int) -> bool:
    """Envoy modified its cluster ``updates`` times, nothing warms, and it ACKed the current snapshot."""
    try:
        modified = _stats(admin_port, "^cluster_manager.cluster_modified$")["cluster_manager.cluster_modified"]
        warming = json.loads(_admin(admin_port, "/config_dump?resource=dynamic_warming_clusters") or b"{}")
    except OSError:  # the admin port is not up yet
        return False
    return modified >= updates and not warming.get("configs") and cache.synced("vm1")


def _wait(predicate, what: str, log_path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            with open(log_path, errors="replace") as f:
                raise AssertionError(f"timed out waiting for {what}; envoy log tail:\n{f.read()[-3000:]}")
        time.sleep(0.05)


@pytest.mark.parametrize("api_type", ["DELTA_GRPC", "GRPC"])
def test_real_envoy_applies_an_updated_cluster_without_waiting_for_the_fetch_timeout(tmp_path, api_type):
    """Envoy counts ``init_fetch_timeout`` when a warming cluster's endpoints did not come: never here
    (before the fix, each update on delta waited the 15 s and counted one)."""
    cache = SnapshotCache()
    server, xds_port = serve_ads(AdsServicer(cache, allow_any_node), "127.0.0.1:0", None)
    admin_port, listener_port = free_port(), free_port()
    publish(cache, "vm1", small_snapshot(listener_port=listener_port))
    try:
        with running_envoy(ads_bootstrap(xds_port, admin_port, api_type), tmp_path) as (envoy, log_path):
            _wait(lambda: cache.synced("vm1"), "Envoy to ACK the first snapshot", log_path)
            for updates in (1, 2):
                res = small_snapshot(listener_port=listener_port)
                res[CLUSTER][0].connect_timeout.seconds = 2 + updates  # the cluster changes, its endpoints do not
                publish(cache, "vm1", res)
                _wait(lambda n=updates: _applied(admin_port, cache, n), f"update {updates} to be applied", log_path)
                timeouts = _stats(admin_port, "init_fetch_timeout$")
                assert not any(timeouts.values()), timeouts  # its endpoints came, not the timeout
            assert envoy.poll() is None
    finally:
        server.stop(0).wait(WAIT)
