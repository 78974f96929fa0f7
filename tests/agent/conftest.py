"""Fixtures for the agent's tests: a real CA behind a small real HTTPS agent-API server on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ._agent_api_server import AgentApiServer
from ._empty_ads import serve_empty_ads


@pytest.fixture
def api_server(tmp_path):
    server = AgentApiServer(tmp_path / "controlplane", leaf_ttl=timedelta(hours=1)).start()
    yield server
    server.stop()


@pytest.fixture
def ca(tmp_path):
    """A real CA of the default trust domain."""
    from meshcore.ca import CertificateAuthority, generate_kek_file

    kek = generate_kek_file(tmp_path / "ca.kek")
    return CertificateAuthority.open(tmp_path / "ca", kek=kek, leaf_ttl=timedelta(hours=1))



@pytest.fixture
def cp(tmp_path):
    """Agent API (HTTPS) + empty ADS (gRPC mTLS), both with the control plane's identity from one real CA."""
    server = AgentApiServer(tmp_path / "cp", leaf_ttl=timedelta(seconds=6))
    key_pem = (server.root / "server.key").read_text()
    chain_pem = (server.root / "server.crt").read_text()
    grpc_server, port, ads = serve_empty_ads(key_pem, chain_pem, server.ca.bundle_pem())
    server.xds_address = f"127.0.0.1:{port}"
    server.ads = ads
    server.start()
    yield server
    server.stop()
    grpc_server.stop(grace=None)
