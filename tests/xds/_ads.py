"""Tiny ADS clients for the server tests: drive one stream, ``send`` requests, ``recv`` responses."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import grpc

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from meshcore.xds._typeurls import CLUSTER

# The longest a test waits for something it expects (a response, an ACK, a thread to end): generous, since
# the machine may be busy; waits for something that must *not* happen are short (expect_nothing).
WAIT = 30.0


class _StreamClient:
    """One bidirectional ADS stream with a reader thread; responses (or the stream's RpcError) queue up."""

    def __init__(self, channel: grpc.Channel, node_id: str, method: str) -> None:
        self.node_id = node_id
        self._requests: queue.Queue[object] = queue.Queue()
        self._responses: queue.Queue[object] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = getattr(stub, method)(self._outgoing())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[object]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
        except grpc.RpcError as exc:
            self._responses.put(exc)

    def _node(self, node_id: str | None) -> base_pb2.Node:
        return base_pb2.Node(id=node_id or self.node_id, cluster="test")

    def recv(self, timeout: float = WAIT):
        item = self._responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def expect_nothing(self, wait: float = 0.5) -> None:
        try:
            item = self._responses.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on the stream: {item}")

    def close(self) -> None:
        self.call.cancel()
        self._requests.put(None)
        self._reader.join(WAIT)


class AdsClient(_StreamClient):
    """State-of-the-world ADS (``StreamAggregatedResources``)."""

    def __init__(self, channel: grpc.Channel, node_id: str = "vm1") -> None:
        super().__init__(channel, node_id, "StreamAggregatedResources")

    def send(self, type_url: str, names=(), version: str = "", nonce: str = "", error: str | None = None,
             node_id: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce,
            node=self._node(node_id),
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names=()) -> None:
        self.send(response.type_url, names, version=response.version_info, nonce=response.nonce)


class DeltaClient(_StreamClient):
    """Delta ADS (``DeltaAggregatedResources``)."""

    def __init__(self, channel: grpc.Channel, node_id: str = "vm1") -> None:
        super().__init__(channel, node_id, "DeltaAggregatedResources")

    def send(self, type_url: str, subscribe=(), unsubscribe=(), nonce: str = "", error: str | None = None,
             initial: dict[str, str] | None = None, node_id: str | None = None) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
            initial_resource_versions=initial or {}, node=self._node(node_id),
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put(request)

    def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        self.send(response.type_url, nonce=response.nonce)


def bad_cluster(resources: dict) -> dict:
    """``resources`` with a cluster change a test proxy then NACKs."""
    resources[CLUSTER][0].connect_timeout.seconds = 99
    return resources


def check_nack_books(cache, servicer, records, good, bad, error: str = "cluster: bad timeout") -> None:
    """A CDS NACK of ``bad`` was logged once, counted, and recorded; ``good`` stays the ACKed version."""
    status = cache.status("vm1")
    assert status["nacks"] == {CLUSTER: 1}
    assert status["acked"][CLUSTER] == good.versions[CLUSTER]
    assert status["last_nack"]["message"] == error
    assert status["last_nack"]["version"] == bad.versions[CLUSTER]
    assert status["synced"] is False
    assert servicer.registry.get_sample_value("meshcore_xds_nacks_total", {"type": "cds"}) == 1
    warning = [r.getMessage() for r in records if "NACK" in r.getMessage()]
    assert len(warning) == 1
    assert f"node=vm1 type_url={CLUSTER} version={bad.versions[CLUSTER]}" in warning[0] and error in warning[0]


@contextlib.contextmanager
def serving(servicer, default_client: type[_StreamClient]) -> Iterator[tuple]:
    """Serve ``servicer`` on a free loopback port; yields ``(connect, port)``, ``connect(node_id, cls)``
    opens a client stream. Clients, channel and server are stopped on exit."""
    from meshcore.xds.server import serve_ads

    server, port = serve_ads(servicer, "127.0.0.1:0", None)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    clients: list[_StreamClient] = []

    def connect(node_id: str = "vm1", cls: type[_StreamClient] = default_client):
        client = cls(channel, node_id)  # type: ignore[call-arg]
        clients.append(client)
        return client

    try:
        yield connect, port
    finally:
        for client in clients:
            client.close()
        channel.close()
        server.stop(0).wait(WAIT)
