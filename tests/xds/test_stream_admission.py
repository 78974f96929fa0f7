"""Finding 4: ADS streams only for node identities, bounded per identity before any work is done for them.

A synthetic attacker opens 260 idle streams (``grpc.aio``, one channel, real certificates from a test CA)
with one workload SVID, then with one node SVID; a legitimate node's new stream is answered meanwhile."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshcore.xds._typeurls import CLUSTER
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServicer, mtls_node_authorizer, serve_ads
from meshcore.xds.validate import publish
from tests.xds._ads import WAIT, AdsClient
from tests.xds._snapshots import small_snapshot
from tests.xds.test_server import _cert, _pem

TD = "cluster.local"
IDLE_STREAMS = 260


class _Pki:
    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("test-ca", self.ca_key, None, None, ca=True)

    def leaf(self, name: str, *sans: x509.GeneralName) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        return _pem(key), _pem(_cert(name, key, self.ca.subject, self.ca_key, sans=sans))

    def server_credentials(self) -> grpc.ServerCredentials:
        key, cert = self.leaf("control-plane", x509.DNSName("localhost"),
                              x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                              x509.UniformResourceIdentifier(f"spiffe://{TD}/meshcore/control-plane"))
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=_pem(self.ca), require_client_auth=True)

    def channel_credentials(self, key: bytes, cert: bytes) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_pem(self.ca), key, cert)


_OVERRIDE = [("grpc.ssl_target_name_override", "localhost")]


@pytest.fixture
def plane():
    pki = _Pki()
    cache = SnapshotCache()
    publish(cache, "vm1", small_snapshot())
    servicer = AdsServicer(cache, mtls_node_authorizer(TD), node_trust_domain=TD, first_request_timeout=60.0)
    server, port = serve_ads(servicer, "127.0.0.1:0", pki.server_credentials())
    yield pki, servicer, port
    server.stop(0).wait(WAIT)


class _IdleStreams:
    """``count`` ADS streams on one channel (its own event loop thread) that never send a request."""

    def __init__(self, target: str, creds: grpc.ChannelCredentials, count: int) -> None:
        self.codes: list[grpc.StatusCode] = []
        self.details: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stop: asyncio.Event | None = None
        asyncio.run_coroutine_threadsafe(self._open(target, creds, count), self._loop).result(WAIT)

    async def _open(self, target: str, creds: grpc.ChannelCredentials, count: int) -> None:
        self._stop = asyncio.Event()
        self._channel = grpc.aio.secure_channel(target, creds, options=_OVERRIDE)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._tasks = [asyncio.ensure_future(self._hold(stub)) for _ in range(count)]

    async def _hold(self, stub) -> None:
        stop = self._stop
        assert stop is not None

        async def nothing():
            await stop.wait()
            if False:  # pragma: no cover - an async generator that yields nothing
                yield discovery_pb2.DiscoveryRequest()

        call = stub.StreamAggregatedResources(nothing())
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            self.codes.append(exc.code())
            self.details.append(exc.details() or "")

    def close(self) -> None:
        async def stop() -> None:
            assert self._stop is not None
            self._stop.set()
            for task in self._tasks:
                task.cancel()
            await self._channel.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)


def _wait(predicate, what: str, timeout: float = WAIT) -> None:


    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _legitimate_stream_is_answered(pki: _Pki, port: int) -> None:
    channel = grpc.secure_channel(f"127.0.0.1:{port}", pki.channel_credentials(
        *pki.leaf("vm1", x509.UniformResourceIdentifier(f"spiffe://{TD}/meshcore/node/vm1"))), options=_OVERRIDE)
    try:
        client = AdsClient(channel, "vm1")
        client.send(CLUSTER)
        assert client.recv(timeout=WAIT).type_url == CLUSTER
        client.close()
    finally:
        channel.close()


@pytest.mark.parametrize("uri, refused_with, held", [
    # a workload SVID: every stream refused on the certificate, before it counts against any bound
    (f"spiffe://{TD}/ns/default/sa/details", grpc.StatusCode.PERMISSION_DENIED, 0),
    # one node identity: it holds its bound, the rest are refused
    (f"spiffe://{TD}/meshcore/node/vm9", grpc.StatusCode.RESOURCE_EXHAUSTED, 8),
])
def test_260_idle_streams_of_one_identity_do_not_starve_a_new_legitimate_stream(plane, uri, refused_with, held):
    pki, servicer, port = plane
    assert servicer.max_streams_per_identity == 8
    creds = pki.channel_credentials(*pki.leaf("attacker", x509.UniformResourceIdentifier(uri)))
    attacker = _IdleStreams(f"127.0.0.1:{port}", creds, IDLE_STREAMS)
    try:
        _wait(lambda: len(attacker.codes) == IDLE_STREAMS - held, "the streams to be refused")
        assert set(attacker.codes) == {refused_with}
        assert servicer._per_identity == ({uri: held} if held else {})
        if not held:
            assert "not a node identity" in attacker.details[0]
            assert servicer.registry.get_sample_value("meshcore_xds_streams_refused_total",
                                                      {"reason": "not_a_node"}) == IDLE_STREAMS
        _legitimate_stream_is_answered(pki, port)
    finally:
        attacker.close()


@pytest.mark.parametrize("sans", [
    (),  # no URI SAN at all
    (x509.UniformResourceIdentifier(f"spiffe://{TD}/meshcore/operator/alice"),),
    (x509.UniformResourceIdentifier("spiffe://other.example/meshcore/node/vm1"),),
    (x509.UniformResourceIdentifier(f"spiffe://{TD}/meshcore/node/vm1"),
     x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/default/sa/details")),
])
def test_every_non_node_certificate_is_refused_when_the_stream_opens(plane, sans):
    pki, servicer, port = plane
    key, cert = pki.leaf("x", *sans) if sans else pki.leaf("x")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", pki.channel_credentials(key, cert), options=_OVERRIDE)
    try:
        silent = AdsClient(channel, "vm1")  # sends nothing: refused on the certificate alone
        with pytest.raises(grpc.RpcError) as info:
            silent.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ADS streams are only for node identities" in info.value.details()
        silent.close()
    finally:
        channel.close()
