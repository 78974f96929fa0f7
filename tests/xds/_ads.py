"""Tiny ADS clients for the server tests: drive one stream, ``send`` requests, ``recv`` responses."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

WAIT = 5.0


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
