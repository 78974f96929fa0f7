"""The agent API's input checks on the real AgentApi (real CA, real join tokens) behind the real HTTP layer.

Wrong types answer 400 with the field path, never a 500; a refused join (weak key, bad name) does not
use the one-time token; node names are DNS labels; a name cannot forge a log line.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import ssl
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography import x509

from meshcore import naming
from meshcore.ca import CertificateAuthority, JoinTokenStore, generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.catalog.model import Catalog
from meshcore.controlplane._http import JsonServer
from meshcore.controlplane.agent_api import AgentApi
from meshcore.logs import setup_logging

TD = naming.DEFAULT_TRUST_DOMAIN


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    root = tmp_path_factory.mktemp("agentapi")
    kek = generate_kek_file(root / "kek")
    ca = CertificateAuthority.open(root / "ca", trust_domain=TD, kek=kek, leaf_ttl=timedelta(hours=1))
    tokens = JoinTokenStore(root / "tokens.json", kek)
    api = AgentApi(ca, tokens, lambda: Catalog.of([], []), "127.0.0.1:15012")
    key = new_private_key()
    cp_id = naming.control_plane_spiffe_id(TD)
    issued = ca.sign_csr(make_csr(key, cp_id), spiffe_id=cp_id, ip_addresses=["127.0.0.1"], ttl=timedelta(hours=1))
    (root / "server.crt").write_text(issued.chain_pem)
    (root / "server.key").write_text(key_to_pem(key))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(root / "server.crt"), str(root / "server.key"))
    tls.load_verify_locations(cadata=ca.bundle_pem())
    tls.verify_mode = ssl.CERT_OPTIONAL
    server = JsonServer(api.router(), "127.0.0.1:0", tls=tls, name="agent-api-test").start()
    plane = type("Plane", (), {})()
    plane.ca, plane.tokens, plane.server, plane.root = ca, tokens, server, root
    try:
        yield plane
    finally:
        server.stop()


def _client_context(plane, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=plane.ca.bundle_pem())
    ctx.check_hostname = False
    if cert and key:
        (plane.root / "client.crt").write_text(cert)
        (plane.root / "client.key").write_text(key)
        ctx.load_cert_chain(str(plane.root / "client.crt"), str(plane.root / "client.key"))
    return ctx


def _post(plane, path: str, body, ctx: ssl.SSLContext | None = None) -> tuple[int, dict]:
    host, port = plane.server.address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx or _client_context(plane), timeout=30)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _join_csr(node: str, key=None) -> str:
    return make_csr(key or new_private_key(), naming.node_spiffe_id(TD, node))


def _weak_csr(node: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(naming.node_spiffe_id(TD, node))]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("body,message", [
    ({"node": "vm1", "token": "t", "csr": 5}, "body.csr: expected a string, got a number"),
    ({"node": ["vm1"], "token": "t", "csr": "x"}, "body.node: expected a string, got a list"),
    ({"node": "vm1", "token": {"a": 1}, "csr": "x"}, "body.token: expected a string, got an object"),
    ({"node": "vm1", "token": "t"}, "body: 'csr' is missing"),
    ([1, 2], "body: expected an object, got a list"),
    ("just a string", "body: expected an object, got a string"),
])
def test_join_with_wrong_types_is_400_with_the_field(plane, body, message):
    status, answer = _post(plane, "/v1/agent/join", body)
    assert status == 400, answer
    assert answer["error"] == message


def test_deep_json_is_400_not_a_recursion_error(plane):
    status, answer = _post(plane, "/v1/agent/join", b"[" * 60000)
    assert status == 400
    assert "nests deeper" in answer["error"]


def test_unauthenticated_join_body_is_capped(plane):
    status, answer = _post(plane, "/v1/agent/join", {"node": "vm1", "token": "t", "csr": "x" * 70000})
    assert status == 413
    assert answer["limit"] == 64 * 1024


def test_weak_key_join_is_400_and_keeps_the_token(plane):
    token = plane.tokens.create("weak-1")
    status, answer = _post(plane, "/v1/agent/join", {"node": "weak-1", "token": token, "csr": _weak_csr("weak-1")})
    assert status == 400, answer
    assert "1024-bit RSA key" in answer["error"] and "token was not used" in answer["error"]
    status, answer = _post(plane, "/v1/agent/join", {"node": "weak-1", "token": token, "csr": _join_csr("weak-1")})
    assert status == 200, answer  # the token still works once
    assert answer["spiffe_id"] == naming.node_spiffe_id(TD, "weak-1")


def test_join_with_an_odd_curve_keeps_the_token(plane):
    token = plane.tokens.create("curve-1")
    key = ec.generate_private_key(ec.SECP256K1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(naming.node_spiffe_id(TD, "curve-1"))]),
                          critical=False).sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM).decode()
    assert _post(plane, "/v1/agent/join", {"node": "curve-1", "token": token, "csr": csr})[0] == 400
    assert _post(plane, "/v1/agent/join", {"node": "curve-1", "token": token, "csr": _join_csr("curve-1")})[0] == 200


@pytest.mark.parametrize("node", ["x/../n2", "*", "a" * 300, "VM1", "vm_1", "-vm", "vm.example", "vm1\nforged"])
def test_join_refuses_node_names_that_are_not_dns_labels(plane, node):
    csr = make_csr(new_private_key(), "spiffe://cluster.local/meshcore/node/vm1")
    status, answer = _post(plane, "/v1/agent/join", {"node": node, "token": "mjt_x", "csr": csr})
    assert status == 400, answer
    assert "node name" in answer["error"] and "is not valid" in answer["error"]


def test_a_name_with_a_newline_cannot_forge_a_log_line(plane):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("info", "text", stream=stream)
    try:
        forged = "vm1\n2026-01-01 00:00:00,000 INFO meshcore.controlplane.agent_api: node joined node=vm1"
        status, _ = _post(plane, "/v1/agent/join", {"node": forged, "token": "mjt_x", "csr": _join_csr("vm1")})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert status == 400
    lines = stream.getvalue().splitlines()
    refused = [line for line in lines if "join refused" in line]
    assert len(refused) == 1 and "vm1\\n2026-01-01" in refused[0]
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)


def _node_identity(plane, node: str) -> ssl.SSLContext:
    key = new_private_key()
    token = plane.tokens.create(node)
    status, answer = _post(plane, "/v1/agent/join", {"node": node, "token": token, "csr": _join_csr(node, key)})
    assert status == 200, answer
    return _client_context(plane, answer["chain"], key_to_pem(key))


@pytest.mark.parametrize("path", ["/v1/agent/sign", "/v1/agent/renew-node"])
@pytest.mark.parametrize("body,message", [
    ({"csr": 5}, "body.csr: expected a string, got a number"),
    ({"csr": None}, "body.csr: expected a string, got null"),
    ([], "body: expected an object, got a list"),
    ({}, "body: 'csr' is missing"),
])
def test_authenticated_calls_with_wrong_types_are_400(plane, path, body, message):
    ctx = _node_identity(plane, "typed-1")
    status, answer = _post(plane, path, body, ctx)
    assert status == 400, answer
    assert answer["error"] == message


def test_authenticated_node_may_send_more_than_the_small_limit(plane):
    ctx = _node_identity(plane, "big-1")
    status, answer = _post(plane, "/v1/agent/renew-node", {"csr": "x" * 100_000, "pad": "y"}, ctx)
    assert status == 400  # read (over 64 KiB) and refused for what it says, not for its size
    assert "not a PEM certificate signing request" in answer["error"]


@pytest.mark.parametrize("framing,status", [
    ("Content-Length: -1", 400),
    ("Transfer-Encoding: chunked", 411),
    (f"Content-Length: {160 * 1024 * 1024}", 413),
    ("Content-Length: 70000", 413),
])
def test_join_without_a_certificate_never_buffers_a_big_body(plane, framing, status):
    """Finding: a join without certificate or token streamed 160 MiB into the control plane. The answer
    comes from the headers: the client sends 64 KiB of the body it announced, then reads the refusal."""
    import socket

    host, port = plane.server.address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    with _client_context(plane).wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(f"POST /v1/agent/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                     .encode())
        chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n" if "chunked" in framing else b"x" * 16384
        try:
            for _ in range(4):  # 64 KiB, less than any announced body (the server drains at most 256 KiB)
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed already
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            assert data, head
            head += data
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head[:200]
    assert b"connection: close" in head.lower()
