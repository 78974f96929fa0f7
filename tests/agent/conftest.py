"""Fixtures for the agent's tests: a real CA behind a small real HTTPS agent-API server on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ._agent_api_server import AgentApiServer


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

