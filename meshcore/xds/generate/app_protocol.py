"""The local app's protocol on its side of the sidecar: ``http2`` and ``grpc`` services get HTTP/2 (pure).

A service's protocol is its instances' meta ``protocol`` (which ``service-defaults`` / ``proxy-defaults``
can set, see ``docs/consul.md``). Mesh hops already negotiate HTTP/2 by ALPN and the connection managers
accept either codec (``AUTO``); the one connection that must know is the inbound sidecar's to the app: a
gRPC server speaks only HTTP/2 (prior knowledge, cleartext), an HTTP/1.1 request would fail.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from ...catalog.model import ServiceInstance
from . import vocab as c

HTTP2_PROTOCOLS = frozenset({"http2", "grpc"})
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def apply_app_protocol(cluster: cluster_pb2.Cluster, instance: ServiceInstance) -> None:
    """Make ``cluster`` (the local app's) speak HTTP/2 when ``instance``'s protocol is ``http2`` or ``grpc``."""
    if instance.protocol not in HTTP2_PROTOCOLS:
        return
    options = hpo_pb2.HttpProtocolOptions(explicit_http_config=hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(c.pack(options))


__all__ = ["HTTP2_PROTOCOLS", "apply_app_protocol"]
