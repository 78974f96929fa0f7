"""The agent API client against a real HTTPS server on loopback with certificates from the real CA."""

from __future__ import annotations

import socket

import pytest

from meshcore import naming
from meshcore.agent.client import AgentClient, AgentRequestError
from meshcore.agent.identity import CertSummary, key_matches_cert
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.errors import AgentError, ControlPlaneUnavailable

TD = naming.DEFAULT_TRUST_DOMAIN


def _joined(api_server, tmp_path, node="vm1"):
    """Join ``node`` through the client and return an authenticated client for it."""
    key = new_private_key()
    client = AgentClient(api_server.url, api_server.ca_file)
    issued = client.join(node, api_server.token(node), make_csr(key, naming.node_spiffe_id(TD, node)))
    cert_file, key_file = tmp_path / f"{node}.crt", tmp_path / f"{node}.key"
    cert_file.write_text(issued.chain)
    key_file.write_text(key_to_pem(key))
    return AgentClient(api_server.url, api_server.ca_file, cert_file=cert_file, key_file=key_file), issued, key


def test_join_returns_a_node_certificate_for_the_key_made_here(api_server, tmp_path):
    _, issued, key = _joined(api_server, tmp_path)
    assert issued.spiffe_id == naming.node_spiffe_id(TD, "vm1")
    assert issued.trust_domain == TD
    assert issued.xds_address == api_server.xds_address
    assert issued.bundle == api_server.ca.bundle_pem()
    assert key_matches_cert(key_to_pem(key), issued.chain)
    assert CertSummary.of(issued.certificate).spiffe_id == issued.spiffe_id
    assert issued.chain.count("BEGIN CERTIFICATE") == 2  # leaf + intermediate


def test_join_refusal_surfaces_the_server_reason_verbatim(api_server):
    client = AgentClient(api_server.url, api_server.ca_file)
    csr = make_csr(new_private_key(), naming.node_spiffe_id(TD, "vm1"))
    with pytest.raises(AgentRequestError) as info:
        client.join("vm1", "not-a-token", csr)
    assert info.value.status == 403
    assert not info.value.retryable
    reason = info.value.reason
    assert reason.startswith("join refused: ")
    assert str(info.value) == reason
    # a token is single use: the second join with it is refused too
    token = api_server.token("vm1")
    client.join("vm1", token, csr)
    with pytest.raises(AgentRequestError, match="join refused"):
        client.join("vm1", token, csr)


def test_services_sign_bundle_and_renew_with_the_node_certificate(api_server, tmp_path):
    spiffe_id = api_server.add_service("vm1", "productpage", "productpage-v1")
    client, issued, _ = _joined(api_server, tmp_path)

    listing = client.services()
    assert listing.node == "vm1" and listing.trust_domain == TD
    assert [(s.name, s.id, s.spiffe_id, s.kind) for s in listing.services] == [
        ("productpage", "productpage-v1", spiffe_id, "")]

    key = new_private_key()
    svid = client.sign(make_csr(key, spiffe_id))
    assert svid.spiffe_id == spiffe_id
    assert key_matches_cert(key_to_pem(key), svid.chain)

    assert client.bundle().bundle == api_server.ca.bundle_pem()

    new_key = new_private_key()
    renewed = client.renew_node(make_csr(new_key, issued.spiffe_id))
    assert renewed.spiffe_id == issued.spiffe_id
    assert CertSummary.of(renewed.chain).serial != CertSummary.of(issued.chain).serial
    # every authenticated call carried the node identity
    assert [node for _, path, node in api_server.calls if path != "/v1/agent/join"] == ["vm1"] * 4


def test_sign_refused_for_an_identity_not_on_this_node(api_server, tmp_path):
    other = api_server.add_service("vm2", "reviews")
    client, _, _ = _joined(api_server, tmp_path)
    with pytest.raises(AgentRequestError) as info:
        client.sign(make_csr(new_private_key(), other))
    assert info.value.status == 403
    assert info.value.reason == f"node 'vm1' runs no service with identity {other}"


def test_server_errors_are_retryable(api_server, tmp_path):
    client, _, _ = _joined(api_server, tmp_path)
    api_server.fail_with = (503, "the control plane has not read the catalog yet; retry shortly")
    with pytest.raises(AgentRequestError) as info:
        client.services()
    assert info.value.retryable
    assert info.value.reason == "the control plane has not read the catalog yet; retry shortly"


def test_calls_without_a_node_certificate_fail_before_sending(api_server):
    client = AgentClient(api_server.url, api_server.ca_file)
    with pytest.raises(AgentError, match="has not joined"):
        client.services()
    assert api_server.calls == []


def test_unreachable_control_plane(api_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    client = AgentClient(f"https://127.0.0.1:{port}", api_server.ca_file, timeout=2)
    with pytest.raises(ControlPlaneUnavailable, match=f"127.0.0.1:{port}"):
        client.join("vm1", "t", make_csr(new_private_key(), naming.node_spiffe_id(TD, "vm1")))


def test_server_not_trusted_by_the_ca_file(api_server, tmp_path):
    from ._agent_api_server import AgentApiServer

    other = AgentApiServer(tmp_path / "other-ca")  # a different CA: its bundle does not trust api_server
    client = AgentClient(api_server.url, other.ca_file)
    with pytest.raises(ControlPlaneUnavailable, match="did not verify"):
        client.join("vm1", "t", make_csr(new_private_key(), naming.node_spiffe_id(TD, "vm1")))
    assert api_server.calls == []


def test_host_name_is_checked(tmp_path):
    from ._agent_api_server import AgentApiServer

    server = AgentApiServer(tmp_path / "cp", dns_names=()).start()  # certificate names 127.0.0.1 only
    try:
        client = AgentClient(f"https://localhost:{server.port}", server.ca_file, timeout=2)
        with pytest.raises(ControlPlaneUnavailable, match="did not verify.*localhost is in the server cert"):
            client.join("vm1", server.token("vm1"), make_csr(new_private_key(), naming.node_spiffe_id(TD, "vm1")))
        assert server.calls == []
    finally:
        server.stop()


def test_url_must_be_https(api_server):
    with pytest.raises(AgentError, match="https"):
        AgentClient("http://127.0.0.1:1", api_server.ca_file)


def test_calls_reuse_one_connection_until_the_certificate_file_changes(api_server, tmp_path):
    spiffe_id = api_server.add_service("vm1", "productpage", "productpage-v1")
    client, issued, _ = _joined(api_server, tmp_path)
    start = len(api_server.peers)
    client.services()
    client.sign(make_csr(new_private_key(), spiffe_id))
    client.bundle()
    assert len(set(api_server.peers[start:])) == 1  # one TLS handshake for three calls

    # a renewed node certificate on disk is presented at once: a new context, a new connection
    key = new_private_key()
    renewed = client.renew_node(make_csr(key, issued.spiffe_id))
    assert client.cert_file is not None and client.key_file is not None
    client.cert_file.write_text(renewed.chain)
    client.key_file.write_text(key_to_pem(key))
    client.services()
    assert api_server.peers[-1] != api_server.peers[-2]
    assert api_server.calls[-1][2] == "vm1"

    client.close()
    client.services()  # usable after close: opens a new connection
    assert api_server.peers[-1] != api_server.peers[-2]


def test_a_kept_alive_connection_the_server_dropped_is_replaced(api_server, tmp_path):
    client, _, _ = _joined(api_server, tmp_path)
    api_server.drop_idle = True  # the server closes each connection after answering, as an idle timeout would
    client.services()
    first = api_server.peers[-1]
    listing = client.services()  # sent on the dead connection first, then again on a new one
    assert listing.node == "vm1"
    assert api_server.peers[-1] != first
    assert api_server.count("/v1/agent/services") == 2  # the request reached the server once per call


def test_the_tls_context_is_built_once_per_set_of_files(api_server, tmp_path):
    """The agent's poll makes several calls: the TLS context is built once per set of files (not per
    request) and again when one of them changes."""
    api_server.add_service("vm1", "web")
    client, _issued, _key = _joined(api_server, tmp_path)
    context = client._context(True)
    assert client._context(True) is context  # cached
    assert client._context(False) is not context  # the unauthenticated one is its own
    assert client._context(True) is context  # and does not evict the other
    renewed_key = new_private_key()
    renewed = client.renew_node(make_csr(renewed_key, naming.node_spiffe_id(TD, "vm1")))
    client.cert_file.write_text(renewed.chain + "\n")  # a renewal rewrites both files (size changes)
    client.key_file.write_text(key_to_pem(renewed_key))
    assert client._context(True) is not context
    assert client.services().node == "vm1"
