"""The ADS server over real gRPC on loopback, with mTLS, and against a real Envoy."""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServicer, allow_any_node, mtls_node_authorizer, serve_ads
from meshcore.xds.validate import publish
from tests.xds._ads import WAIT, AdsClient, bad_cluster, check_nack_books, serving
from tests.xds._envoy import ads_bootstrap, running_envoy
from tests.xds._snapshots import endpoints, http_filter_chain, small_snapshot, socket as sock_addr


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        if packed.type_url == ENDPOINT:
            from envoy.config.endpoint.v3 import endpoint_pb2
            m = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(m)
            out.append(m.cluster_name)
        else:
            m = {CLUSTER: cluster_pb2.Cluster, LISTENER: listener_pb2.Listener}.get(packed.type_url)
            if m is None:
                from envoy.config.route.v3 import route_pb2
                m = route_pb2.RouteConfiguration
            msg = m()
            packed.Unpack(msg)
            out.append(msg.name)
    return out


@pytest.fixture
def ads():
    cache = SnapshotCache()
    servicer = AdsServicer(cache, allow_any_node)
    with serving(servicer, AdsClient) as (connect, port):
        yield cache, servicer, connect, port


def wait_no_reader_threads(timeout: float = WAIT) -> list[str]:
    """Names of ADS reader threads still alive after waiting up to ``timeout`` for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("ads-reader-")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def metric(servicer: AdsServicer, name: str, type_: str | None = None) -> float:
    value = servicer.registry.get_sample_value(name, {"type": type_} if type_ else {})
    return value or 0.0


def subscribe_all(client: AdsClient) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Subscribe like Envoy (CDS, EDS, LDS, RDS), ACK everything, return the responses by type."""
    got = {}
    client.send(CLUSTER)
    got[CLUSTER] = client.recv()
    client.ack(got[CLUSTER])
    client.send(ENDPOINT, ["outbound:backend"])
    got[ENDPOINT] = client.recv()
    client.ack(got[ENDPOINT], ["outbound:backend"])
    client.send(LISTENER)
    got[LISTENER] = client.recv()
    client.ack(got[LISTENER])
    client.send(ROUTE, ["inbound:web"])
    got[ROUTE] = client.recv()
    client.ack(got[ROUTE], ["inbound:web"])
    return got


# --- protocol tests ------------------------------------------------------------------------------

def test_initial_response_per_type_and_acks(ads):
    cache, servicer, connect, _ = ads
    snap = publish(cache, "vm1", small_snapshot())
    client = connect()

    client.send(CLUSTER)
    cds = client.recv()
    assert cds.type_url == CLUSTER and cds.version_info == snap.versions[CLUSTER]
    assert names_of(cds) == ["outbound:backend"]

    # EDS: only requested names that exist.
    client.ack(cds)
    client.send(ENDPOINT, ["outbound:backend", "outbound:unknown"])
    eds = client.recv()
    assert names_of(eds) == ["outbound:backend"] and eds.version_info == snap.versions[ENDPOINT]

    client.ack(eds, ["outbound:backend", "outbound:unknown"])
    client.send(LISTENER)
    lds = client.recv()
    assert names_of(lds) == ["inbound:web"]
    client.ack(lds)
    client.send(ROUTE, ["inbound:web"])
    rds = client.recv()
    assert names_of(rds) == ["inbound:web"]
    assert len({cds.nonce, eds.nonce, lds.nonce, rds.nonce}) == 4

    assert cache.synced("vm1") is False  # RDS not ACKed yet
    client.ack(rds, ["inbound:web"])
    assert cache.wait_synced("vm1", WAIT)
    client.expect_nothing()  # ACKs are not answered
    status = cache.status("vm1")
    assert status["acked"] == {t: snap.versions[t] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    assert status["connected_streams"] == 1 and status["protocols"] == ["sotw"]
    for short in ("cds", "eds", "lds", "rds"):
        assert metric(servicer, "meshcore_xds_pushes_total", short) == 1
        assert metric(servicer, "meshcore_xds_acks_total", short) == 1
    assert metric(servicer, "meshcore_xds_connected_proxies") == 1


def test_update_is_pushed_quickly_and_unchanged_set_pushes_nothing(ads):
    cache, _, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)

    assert publish(cache, "vm1", small_snapshot()).version  # same content
    client.expect_nothing(0.5)

    started = time.monotonic()
    newer = publish(cache, "vm1", small_snapshot(upstream_port=19090))
    eds = client.recv(timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert eds.type_url == ENDPOINT and eds.version_info == newer.versions[ENDPOINT]
    client.expect_nothing(0.3)  # only the changed type is pushed
    client.ack(eds, ["outbound:backend"])
    assert cache.wait_synced("vm1", WAIT)


def test_push_order_is_cds_eds_lds_rds(ads):
    cache, _, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)
    assert cache.wait_synced("vm1", WAIT)
    changed = small_snapshot(listener_port=15003, body="v3", upstream_port=19092)
    changed[CLUSTER][0].connect_timeout.seconds = 7
    new = publish(cache, "vm1", changed)
    responses = [client.recv() for _ in range(4)]
    assert [r.type_url for r in responses] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    assert [r.version_info for r in responses] == [new.versions[t] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)]


def test_nack_is_counted_and_the_bad_version_is_not_resent_at_once(ads, caplog):
    cache, servicer, connect, _ = ads
    good = publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)

    bad = publish(cache, "vm1", bad_cluster(small_snapshot()))
    cds = client.recv()
    assert cds.version_info == bad.versions[CLUSTER]
    with caplog.at_level("WARNING", logger="meshcore.xds.server"):
        client.send(CLUSTER, version=good.versions[CLUSTER], nonce=cds.nonce, error="cluster: bad timeout")
        client.expect_nothing(0.7)  # no immediate resend loop (the first retry waits 1 s)
    check_nack_books(cache, servicer, caplog.records, good, bad)

    # The next snapshot change is pushed.
    fixed = publish(cache, "vm1", small_snapshot())
    cds2 = client.recv()
    assert cds2.version_info == fixed.versions[CLUSTER] == good.versions[CLUSTER]
    client.ack(cds2)
    assert cache.wait_synced("vm1", WAIT)


def test_nacked_version_is_offered_again_with_backoff(ads, monkeypatch):
    """A transient NACK (a certificate file the agent has not written yet) heals without a mesh change."""
    import meshcore.xds.server as server

    monkeypatch.setattr(server, "NACK_RESEND_BASE_S", 0.3)
    cache, _, connect, _ = ads
    snap = publish(cache, "vm1", small_snapshot())
    client = connect()
    client.send(CLUSTER)
    first = client.recv()
    client.send(CLUSTER, version="", nonce=first.nonce, error="secret file missing")
    started = time.monotonic()
    again = client.recv()
    waited = time.monotonic() - started
    assert again.version_info == snap.versions[CLUSTER] and again.nonce != first.nonce
    assert 0.2 < waited < 2.0
    client.send(CLUSTER, version="", nonce=again.nonce, error="secret file missing")
    client.expect_nothing(0.45)  # the second retry waits twice as long
    third = client.recv()
    client.ack(third)
    assert cache.wait_synced("vm1", WAIT)
    assert cache.status("vm1")["nacks"] == {CLUSTER: 2}


def test_stale_nonce_is_ignored_and_subscription_changes_are_answered(ads):
    cache, _, connect, _ = ads
    resources = small_snapshot()
    resources[ENDPOINT].append(endpoints("outbound:other", 1))
    publish(cache, "vm1", resources)
    client = connect()
    got = subscribe_all(client)
    client.send(ENDPOINT, ["outbound:backend", "outbound:other"], nonce="not-a-nonce-we-sent")
    client.expect_nothing(0.4)
    # With the latest nonce, a new name list is answered with the same version and the new set.
    client.send(ENDPOINT, ["outbound:backend", "outbound:other"], version=got[ENDPOINT].version_info,
                nonce=got[ENDPOINT].nonce)
    eds = client.recv()
    assert names_of(eds) == ["outbound:backend", "outbound:other"]
    assert eds.version_info == got[ENDPOINT].version_info


def test_subscription_before_any_snapshot_is_answered_when_it_arrives(ads):
    cache, _, connect, _ = ads
    client = connect("vm9")
    client.send(CLUSTER)
    client.expect_nothing(0.3)
    snap = publish(cache, "vm9", small_snapshot())
    assert client.recv().version_info == snap.versions[CLUSTER]


def test_other_nodes_changes_do_not_reach_the_stream(ads):
    cache, _, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    client = connect()
    subscribe_all(client)
    publish(cache, "vm2", small_snapshot(body="other"))
    client.expect_nothing(0.4)


def test_node_id_change_mid_stream_is_refused(ads):
    cache, _, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    client = connect()
    client.send(CLUSTER)
    cds = client.recv()
    client.send(CLUSTER, version=cds.version_info, nonce=cds.nonce, node_id="vm2")
    with pytest.raises(grpc.RpcError) as info:
        client.recv()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node.id changed" in info.value.details()
    assert wait_no_reader_threads() == []
    assert cache.status("vm1")["connected_streams"] == 0


def test_first_request_without_node_is_invalid(ads):
    _, _, connect, _ = ads
    client = connect(node_id="")
    client._requests.put(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    with pytest.raises(grpc.RpcError) as info:
        client.recv()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_authorizer_that_raises_refuses_with_permission_denied():
    def refuse(context, node):
        raise PermissionError(f"{node.id} is quarantined")

    cache = SnapshotCache()
    publish(cache, "vm1", small_snapshot())
    server, port = serve_ads(AdsServicer(cache, refuse), "127.0.0.1:0", None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = AdsClient(channel)
            client.send(CLUSTER)
            with pytest.raises(grpc.RpcError) as info:
                client.recv()
            client.close()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "vm1 is quarantined" in info.value.details()
        assert cache.status("vm1")["pushes"] == {}
    finally:
        server.stop(0).wait(WAIT)


def test_disconnect_cleans_up_streams_and_threads(ads):
    cache, servicer, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    clients = [connect() for _ in range(3)]
    for c in clients:
        subscribe_all(c)
    assert cache.status("vm1")["connected_streams"] == 3
    for c in clients:
        c.close()
    assert wait_no_reader_threads() == []
    # The stream handler closes its books just after its reader thread ends: give it a moment.
    deadline = time.monotonic() + WAIT
    while cache.status("vm1")["connected_streams"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cache.status("vm1")["connected_streams"] == 0
    assert metric(servicer, "meshcore_xds_connected_proxies") == 0
    assert cache.synced("vm1") is False


# --- mTLS node identity --------------------------------------------------------------------------

def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool = False, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_mtls_node_may_only_ask_for_its_own_config():
    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("control-plane", server_key, ca.subject, ca_key, sans=[
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier("spiffe://cluster.local/meshcore/control-plane")])
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = _cert("vm1", node_key, ca.subject, ca_key, sans=[
        x509.UniformResourceIdentifier("spiffe://cluster.local/meshcore/node/vm1")])

    cache = SnapshotCache()
    snap = publish(cache, "vm1", small_snapshot())
    publish(cache, "vm2", small_snapshot(body="vm2-secret"))
    servicer = AdsServicer(cache, mtls_node_authorizer("cluster.local"))
    creds = grpc.ssl_server_credentials([(_pem(server_key), _pem(server_cert))], root_certificates=_pem(ca),
                                        require_client_auth=True)
    server, port = serve_ads(servicer, "127.0.0.1:0", creds)
    client_creds = grpc.ssl_channel_credentials(_pem(ca), _pem(node_key), _pem(node_cert))
    channel = grpc.secure_channel(f"127.0.0.1:{port}", client_creds,
                                  options=[("grpc.ssl_target_name_override", "localhost")])
    try:
        thief = AdsClient(channel, "vm2")
        thief.send(CLUSTER)
        with pytest.raises(grpc.RpcError) as info:
            thief.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may only request config for node 'vm1', not 'vm2'" in info.value.details()
        assert cache.status("vm2")["pushes"] == {} and cache.status("vm2")["connected_streams"] == 0
        assert wait_no_reader_threads() == []
        assert metric(servicer, "meshcore_xds_pushes_total", "cds") == 0

        owner = AdsClient(channel, "vm1")
        owner.send(CLUSTER)
        cds = owner.recv()
        assert cds.version_info == snap.versions[CLUSTER] and names_of(cds) == ["outbound:backend"]
        owner.close()

        other_td = mtls_node_authorizer("example.org")
        servicer.authorize = other_td
        stranger = AdsClient(channel, "vm1")
        stranger.send(CLUSTER)
        with pytest.raises(grpc.RpcError) as info:
            stranger.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "trust domain 'cluster.local', expected 'example.org'" in info.value.details()

        # The stream bound counts the certificate's identity before any request is read.
        servicer.authorize = mtls_node_authorizer("cluster.local")
        servicer.max_streams_per_identity = 1
        holder = AdsClient(channel, "vm1")
        holder.send(CLUSTER)
        holder.recv()
        silent = AdsClient(channel, "vm1")  # sends nothing
        with pytest.raises(grpc.RpcError) as info:
            silent.recv()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "spiffe://cluster.local/meshcore/node/vm1 already holds 1 open ADS streams" in info.value.details()
        holder.close()
        silent.close()
    finally:
        channel.close()
        server.stop(0).wait(WAIT)


# --- a real Envoy --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status, resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _wait_for(predicate, timeout: float, what: str, log_path: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    with open(log_path, errors="replace") as f:
        tail = f.read()[-4000:]
    raise AssertionError(f"timed out waiting for {what}; envoy log tail:\n{tail}")


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_real_envoy_acks_then_nacks_and_keeps_the_last_good_listener(tmp_path, api_type):
    """State of the world (GRPC) and delta (DELTA_GRPC) against a real Envoy."""
    cache = SnapshotCache()
    servicer = AdsServicer(cache, allow_any_node)
    server, xds_port = serve_ads(servicer, "127.0.0.1:0", None)
    admin_port, listener_port = _free_port(), _free_port()
    good = publish(cache, "vm1", small_snapshot(listener_port=listener_port, body="v1"))
    stack = contextlib.ExitStack()
    try:
        envoy, log_path = stack.enter_context(running_envoy(ads_bootstrap(xds_port, admin_port, api_type), tmp_path))
        _wait_for(lambda: cache.synced("vm1"), 30, "Envoy to ACK the snapshot", log_path)
        assert cache.status("vm1")["acked"] == {t: good.versions[t] for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        protocol = "delta" if api_type == "DELTA_GRPC" else "sotw"
        assert servicer.registry.get_sample_value("meshcore_xds_streams", {"protocol": protocol}) == 1
        url = f"http://127.0.0.1:{listener_port}/"
        assert _wait_for(lambda: _get(url), 15, "the listener to answer", log_path) == (200, "v1")

        # Two filter chains with identical (empty) matches: valid protos, valid references, Envoy refuses.
        bad_resources = small_snapshot(listener_port=listener_port, body="v1")
        bad_resources[LISTENER] = [listener_pb2.Listener(
            name="inbound:web", address=sock_addr(listener_port),
            filter_chains=[http_filter_chain("inbound:web"), http_filter_chain("inbound:web")],
        )]
        bad = publish(cache, "vm1", bad_resources)
        assert bad.versions[LISTENER] != good.versions[LISTENER]
        _wait_for(lambda: cache.status("vm1")["nacks"].get(LISTENER) == 1, 15, "Envoy's NACK", log_path)
        status = cache.status("vm1")
        assert status["last_nack"]["type_url"] == LISTENER
        assert status["last_nack"]["version"] == bad.versions[LISTENER]
        assert "has the same matching rules defined as" in status["last_nack"]["message"]
        assert status["acked"][LISTENER] == good.versions[LISTENER]
        assert metric(servicer, "meshcore_xds_nacks_total", "lds") == 1
        assert _get(url) == (200, "v1")  # the last good listener still serves
        time.sleep(0.5)
        # No tight resend loop: at most the one backoff resend (after 1 s) may have gone out by now.
        assert cache.status("vm1")["pushes"][LISTENER] in (2, 3)
        assert cache.synced("vm1") is False
        assert envoy.poll() is None
    finally:
        stack.close()
        server.stop(0).wait(WAIT)


def test_updated_clusters_get_their_unchanged_endpoints_again(ads):
    """An updated cluster warms in Envoy until it has endpoints: after the proxy ACKs a new cluster
    version, and when it re-subscribes with the last nonce, the (unchanged) endpoints are sent again."""
    cache, _, connect, _ = ads
    first = publish(cache, "vm1", small_snapshot())
    client = connect()
    got = subscribe_all(client)
    changed = small_snapshot()
    changed[CLUSTER][0].connect_timeout.seconds = 7  # clusters change, endpoints do not
    second = publish(cache, "vm1", changed)
    assert second.versions[ENDPOINT] == first.versions[ENDPOINT]
    cds = client.recv()
    assert cds.type_url == CLUSTER
    client.expect_nothing(0.3)  # endpoints unchanged: nothing until the clusters are ACKed
    client.ack(cds)
    eds = client.recv()
    assert eds.type_url == ENDPOINT and eds.version_info == first.versions[ENDPOINT]
    assert names_of(eds) == ["outbound:backend"] and eds.nonce != got[ENDPOINT].nonce
    client.ack(eds, ["outbound:backend"])
    client.expect_nothing(0.3)  # the ACK of the resent endpoints is not answered
    # A re-subscription with the same names and the last nonce is answered again.
    client.send(ENDPOINT, ["outbound:backend"], version=eds.version_info, nonce=eds.nonce)
    again = client.recv()
    assert again.type_url == ENDPOINT and again.version_info == eds.version_info and again.nonce != eds.nonce


def test_a_second_server_on_a_taken_port_fails_to_bind_instead_of_sharing_it():
    """gRPC servers set SO_REUSEPORT by default on Linux: a second control plane on the same address would
    bind silently and the kernel would hand it half of the proxies' connections (another mesh's CA). The
    ADS server turns that off, so the second one gets a clear bind error."""
    from meshcore.errors import XdsError

    first, port = serve_ads(AdsServicer(SnapshotCache(), allow_any_node), "127.0.0.1:0", None)
    try:
        with pytest.raises(XdsError, match="cannot bind the ADS server"):
            second, _ = serve_ads(AdsServicer(SnapshotCache(), allow_any_node), f"127.0.0.1:{port}", None)
            second.stop(0).wait(5)
    finally:
        first.stop(0).wait(5)


def test_end_node_streams_ends_only_that_nodes_streams(ads):
    """A revoked node (meshctl node revoke) loses its open ADS streams at once; other nodes keep theirs."""
    cache, servicer, connect, _ = ads
    publish(cache, "vm1", small_snapshot())
    publish(cache, "vm2", small_snapshot())
    revoked, other = connect(), connect(node_id="vm2")
    revoked.send(CLUSTER)
    revoked.recv()
    other.send(CLUSTER)
    other.recv()
    servicer.end_node_streams("vm1", "node 'vm1' was revoked (meshctl node revoke)")
    with pytest.raises(grpc.RpcError) as info:
        revoked.recv()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in info.value.details()
    deadline = time.monotonic() + WAIT
    while cache.status("vm1")["connected_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.status("vm1")["connected_streams"] == 0
    assert cache.status("vm2")["connected_streams"] == 1
