"""A real Envoy's upstream side: a sidecar reaching ``details`` accepts only details' workload SVID, never a node
certificate of the same CA (a stolen node key cannot pose as a service).

The cluster is exactly ``service_upstream_cluster`` (productpage -> details), its endpoints given statically
instead of over EDS; a TCP listener in front of it. Behind it, Python TLS servers present details' SVID, a node
certificate, and another service's SVID.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from google.protobuf import json_format

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from meshcore import naming
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret
from meshcore.ca import CertificateAuthority, key_to_pem, make_csr, new_private_key
from meshcore.federation import trust_validation_secret
from meshcore.xds.generate import vocab as c
from meshcore.xds.generate.clusters import service_upstream_cluster

from .._catalog import free_port, snapshot, write_catalog
from .._envoy import EnvoyProcess

TD = "cluster.local"


def _issue(ca: CertificateAuthority, spiffe_id: str) -> tuple[str, str]:
    key = new_private_key()
    return ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id).chain_pem, key_to_pem(key)


class _TlsServer:
    """Answers one HTTP 200 per connection, presenting ``identity``; stopped when the block ends."""

    def __init__(self, identity: tuple[str, str], where: Path):
        where.mkdir()
        (where / "c.pem").write_text(identity[0])
        (where / "k.pem").write_text(identity[1])
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(where / "c.pem"), str(where / "k.pem"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            try:
                raw.settimeout(5)
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass  # Envoy refused us: what some cases expect
            finally:
                raw.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def _through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: details\r\nConnection: close\r\n\r\n")
        try:
            return s.makefile("rb").read()
        except ConnectionResetError:  # Envoy gave up on the upstream: nothing came through
            return b""


@pytest.fixture
def servers(tmp_path):
    ca = CertificateAuthority.open(tmp_path / "ca", trust_domain=TD, kek=os.urandom(32))
    identities = {
        "details": _issue(ca, naming.workload_spiffe_id(TD, "default", "details")),
        "node": _issue(ca, naming.node_spiffe_id(TD, "n2")),
        "reviews": _issue(ca, naming.workload_spiffe_id(TD, "default", "reviews")),
    }
    secrets = SecretsDirectory(tmp_path / "secrets")
    secrets.prepare()
    secrets.write(tls_certificate_secret(naming.svid_secret("productpage"),
                                         *_issue(ca, naming.workload_spiffe_id(TD, "default", "productpage"))))
    secrets.write(trust_validation_secret(naming.trust_bundle_secret(TD), TD, ca.bundle_pem()))
    write_catalog(tmp_path / "catalog", [{"name": "details"}], node="n2")
    snap = snapshot(tmp_path / "catalog")
    started = {name: _TlsServer(ident, tmp_path / name) for name, ident in identities.items()}
    for server in started.values():
        server.__enter__()
    try:
        yield snap, secrets, started, tmp_path
    finally:
        for server in started.values():
            server.__exit__()


def test_upstream_refuses_a_node_certificate_posing_as_the_service(servers):
    snap, secrets, started, tmp_path = servers
    listeners, clusters, ports = [], [], {}
    for name, server in started.items():
        cluster = service_upstream_cluster(snap, "productpage", "details", "", str(secrets.path))
        cluster.name = f"to-{name}"
        cluster.type = cluster.STATIC
        cluster.ClearField("eds_cluster_config")
        cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
            cluster_name=cluster.name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=c.socket_address("127.0.0.1", server.port)))])]))
        clusters.append(json_format.MessageToDict(cluster))
        ports[name] = free_port()
        listeners.append({"name": f"via-{name}", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": ports[name]}}, "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": cluster.name}}]}]})
    admin = free_port()
    bootstrap = {"node": {"id": "n1", "cluster": "test"},
                 "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
                 "static_resources": {"listeners": listeners, "clusters": clusters}}
    (tmp_path / "envoy").mkdir()
    with EnvoyProcess(bootstrap, f"127.0.0.1:{admin}", tmp_path / "envoy"):
        assert _through(ports["details"]).startswith(b"HTTP/1.1 200"), "details' own SVID must be accepted"
        assert _through(ports["node"]) == b"", "a node certificate was accepted as the details service"
        assert _through(ports["reviews"]) == b"", "another service's SVID was accepted as details"
