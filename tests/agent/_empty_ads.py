"""A minimal real ADS server (grpcio, mTLS) that answers every first request with an empty config.

Enough for an Envoy started from the agent's bootstrap to finish initialising (``/ready`` -> LIVE)
and for a test to see which client identity connected. The real ADS server is the control plane's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2


class EmptyAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self) -> None:
        self.peers: list[str] = []  # URI SAN of each connecting client certificate
        self.nodes: list[str] = []
        self._lock = threading.Lock()

    def StreamAggregatedResources(self, request_iterator, context) -> Iterator[discovery_pb2.DiscoveryResponse]:
        pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
        with self._lock:
            for uri in _uris(pem):
                self.peers.append(uri)
        for request in request_iterator:
            if request.node.id:
                with self._lock:
                    self.nodes.append(request.node.id)
            if request.response_nonce:
                continue  # an ACK (or NACK) of what we sent: nothing more to say
            yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=request.type_url, nonce="1")

    def DeltaAggregatedResources(self, request_iterator, context) -> Iterator[discovery_pb2.DeltaDiscoveryResponse]:
        """The same over delta xDS (the agent's default; its requests have the fields read above)."""
        for response in self.StreamAggregatedResources(request_iterator, context):
            yield discovery_pb2.DeltaDiscoveryResponse(system_version_info="1", type_url=response.type_url, nonce="1")


def _uris(pem: bytes) -> list[str]:
    if not pem:
        return []
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def serve_empty_ads(key_pem: str, chain_pem: str, bundle_pem: str) -> tuple[grpc.Server, int, EmptyAds]:
    """Start on 127.0.0.1 (free port), requiring client certificates from ``bundle_pem``."""
    servicer = EmptyAds()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key_pem.encode(), chain_pem.encode())],
                                        root_certificates=bundle_pem.encode(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port, servicer
