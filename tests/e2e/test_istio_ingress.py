"""End to end, with the real Envoys of one bookinfo mesh: Istio's ingress and request-authentication kinds.

* RequestAuthentication on details (PERMISSIVE, so the test calls its inbound listener in plaintext): a token signed
  by the test JWKS passes, an expired or wrongly signed one is a 401, none passes RequestAuthentication but an
  AuthorizationPolicy requiring a request principal (and one denying a claim) answers 403;
* a claim routed: RequestAuthentication on the ingress gateway and a VirtualService bound to its Gateway that sends
  ``group: beta`` tokens to details (``@request.auth.claims.group``), everyone else to productpage;
* a CORS preflight answered by the gateway for an allowed origin, without CORS headers for another;
* Gateway TLS ingress by SNI: one HTTPS port, two servers, each its own certificate (files; the mesh CA);
* Gateway PASSTHROUGH: a TLS client reaches a backend's own TLS server (a ServiceEntry) through the gateway, routed
  by SNI, and sees the backend's certificate.
* Gateway TCP servers (Istio's tcp-echo sample): bytes through the gateway's TCP port reach tcp-echo's subsets by
  the VirtualService's weights (80/20), and a TLS server terminated at the gateway (mesh CA) routes to v2 by tcp[];
* AuthorizationPolicy on the gateway's TCP chains (network RBAC, against the real Envoy): a DENY of one source
  address cuts that client's connections on the TCP and the PASSTHROUGH servers, another client's pass;
* AuthorizationPolicy at the gateway: a DENY answered 403 by the gateway before any backend is called, the client's
  address from X-Forwarded-For (remoteIpBlocks, one trusted proxy in the mesh config), a token required on some
  requests and accepted from an issuer whose keys came through OIDC discovery (a loopback HTTPS issuer of a test CA,
  trusted through the mesh config's jwks section), and ``meshctl authz check --jwt``.

All resources go in with one ``meshctl apply``; every check polls until the config has reached the Envoys.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import http.server
import json
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshcore.demo.launcher import wait_until

from tests.policies.request_authentication._https import OidcServer, jwks_of, make_ca

from ._tcp_echo import TcpEcho
from ._topology import NODES, free_port, loopback, meshctl, running_mesh, service

ISSUER = "https://issuer.test"
CONVERGE_S = 30.0


def _jwks(key) -> str:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]})


def _ca_and_cert(root: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate for ``host`` signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingress test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = root / "ingress-ca.crt", root / f"{host}.crt", root / f"{host}.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


PASSTHROUGH_HOST = "tls.backend.test"
BACKEND = loopback(25)  # the backend's own TLS server, outside the mesh (a ServiceEntry)


def _backend(root: Path) -> tuple[http.server.ThreadingHTTPServer, Path, Path]:
    """A TLS server with its own CA's certificate for PASSTHROUGH_HOST: the server, its CA and certificate files."""
    backend = root / "backend"
    (backend / "www").mkdir(parents=True)
    (backend / "www" / "productpage").write_bytes(b"the backend's own TLS")  # what _tls_get asks for
    ca, cert, key = _ca_and_cert(backend, PASSTHROUGH_HOST)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(backend / "www"))
    server = http.server.ThreadingHTTPServer((BACKEND, 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ca, cert


def _passthrough(port: int, backend_port: int) -> tuple[str, str]:
    """The resources of a PASSTHROUGH server of Gateway ``front`` for PASSTHROUGH_HOST (routed by SNI to its
    ServiceEntry), and the server itself: (documents, server entry)."""
    return f"""
---
apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {{name: tls-backend}}
spec: {{hosts: [{PASSTHROUGH_HOST}], ports: [{{number: 443, name: tls, protocol: TLS}}], resolution: STATIC,
        endpoints: [{{address: {BACKEND}, ports: {{tls: {backend_port}}}}}]}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: tls-backend}}
spec:
  hosts: [{PASSTHROUGH_HOST}]
  gateways: [front]
  tls: [{{match: [{{sniHosts: [{PASSTHROUGH_HOST}]}}], route: [{{destination: {{host: {PASSTHROUGH_HOST}}}}}]}}]
""", f"""  - port: {{number: {port}, name: tls, protocol: TLS}}
    bind: {NODES["gw"]}
    hosts: [{PASSTHROUGH_HOST}]
    tls: {{mode: PASSTHROUGH}}
"""


def _resources(jwks: str, http_port: int, https_port: int, cert: Path, key: Path,
               passthrough: tuple[str, str] = ("", "")) -> str:
    gw = NODES["gw"]
    return f"""
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {{name: details-permissive}}
spec: {{selector: {{matchLabels: {{app: details}}}}, mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules: [{{issuer: "{ISSUER}", jwks: {json.dumps(jwks)}}}]
---
apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {{name: gateway-jwt}}
spec:
  selector: {{matchLabels: {{app: ingress-gateway}}}}
  jwtRules: [{{issuer: "{ISSUER}", jwks: {json.dumps(jwks)}}}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: details-jwt}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/details/*"]}}}}]
  - when: [{{key: "request.auth.claims[group]", values: [blocked]}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {{name: front}}
spec:
  selector: {{app: ingress-gateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    bind: {gw}
    hosts: ["*"]
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    name: bookinfo
    bind: {gw}
    hosts: [bookinfo.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    name: shop
    bind: {gw}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE}}
{passthrough[1]}---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: front}}
spec:
  hosts: ["*"]
  gateways: [front]
  http:
  - match: [{{headers: {{"@request.auth.claims.group": {{exact: beta}}}}}}]
    route: [{{destination: {{host: details}}}}]
  - corsPolicy:
      allowOrigins: [{{exact: "https://app.example.com"}}]
      allowMethods: [GET, POST]
      allowHeaders: [authorization]
      maxAge: 1h
    route: [{{destination: {{host: productpage}}}}]
{passthrough[0]}"""


def _gateway_authorization(oidc_issuer: str, http_port: int, tcp_ports: tuple[int, ...]) -> str:
    """AuthorizationPolicy at the gateway, and a RequestAuthentication whose issuer's keys come by OIDC discovery.
    The rules with HTTP-only fields name the HTTP port: on the gateway's TCP chains (the PASSTHROUGH and TCP servers)
    a DENY rule's HTTP-only fields cannot be checked, so, as in Istio, the rule would deny every connection there.
    The last rule denies one client address on ``tcp_ports`` (network RBAC on those chains)."""
    return f"""
---
apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {{name: gateway-oidc}}
spec:
  selector: {{matchLabels: {{app: ingress-gateway}}}}
  jwtRules: [{{issuer: "{oidc_issuer}"}}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: gateway-edge}}
spec:
  selector: {{matchLabels: {{app: ingress-gateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/blocked*"], ports: ["{http_port}"]}}}}]
  - from: [{{source: {{remoteIpBlocks: ["203.0.113.0/24"]}}}}]
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{ports: ["{http_port}"]}}}}]
    when: [{{key: "request.headers[x-tier]", values: [members]}}]
  - from: [{{source: {{ipBlocks: ["{DENIED_CLIENT}/32"]}}}}]
    to: [{{operation: {{ports: [{", ".join(f'"{p}"' for p in tcp_ports)}]}}}}]
"""


def _tcp_echo_instance(version: str, node: str):
    """A tcp-echo instance (meta protocol tcp, no health check: this module serves it, :class:`TcpEcho`)."""
    node, svc = service("tcp-echo", f"tcp-echo-{version}", node, version)
    svc["meta"]["protocol"] = "tcp"
    svc.pop("check", None)
    return node, svc


DENIED_CLIENT, ALLOWED_CLIENT = NODES["n3"], NODES["n1"]  # the source addresses the TCP checks connect from


def _tcp_resources(tcp_port: int, tls_tcp_port: int) -> str:
    """Istio's tcp-echo sample (tcp-echo-20-v2) on the gateway's TCP port, and a TLS server terminated with the mesh
    CA routed to v2 by tcp[]."""
    gw = NODES["gw"]
    return f"""
---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {{name: tcp-echo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    bind: {gw}
    hosts: ["*"]
  - port: {{number: {tls_tcp_port}, name: tls, protocol: TLS}}
    bind: {gw}
    hosts: [echo.example.com]
    tls: {{mode: SIMPLE}}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: tcp-echo-destination}}
spec:
  host: tcp-echo
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{{port: {tcp_port}}}]
    route:
    - {{destination: {{host: tcp-echo, subset: v1}}, weight: 80}}
    - {{destination: {{host: tcp-echo, subset: v2}}, weight: 20}}
  - match: [{{port: {tls_tcp_port}}}]
    route: [{{destination: {{host: tcp-echo, subset: v2}}}}]
"""


def _mesh_config(path: Path, oidc: OidcServer, ca: Path) -> Path:
    port = int(oidc.issuer.rsplit(":", 1)[1])
    path.write_text(f"jwks:\n  servers: [{{host: 127.0.0.1, port: {port}, caCertificates: {ca}}}]\n"
                    f"  discovery: {{caCertificates: {ca}}}\n"
                    "defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n")
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("ingress-mesh")
    oidc_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oidc_ca, oidc_cert, oidc_cert_key = make_ca(tmp_path_factory.mktemp("oidc"))
    echo_instances = [_tcp_echo_instance("v1", "n2"), _tcp_echo_instance("v2", "n3")]
    echoes = [TcpEcho(NODES[node], svc["port"], svc["meta"]["version"]) for node, svc in echo_instances]
    with OidcServer(oidc_cert, oidc_cert_key, jwks_of(oidc_key)) as oidc, \
            running_mesh(state, artifacts="e2e-istio-ingress-logs", extra=echo_instances,
                         env={"MESHCORE_MESH_CONFIG": str(_mesh_config(state / "mesh-config.yaml", oidc, oidc_ca))}) as m:
        m.key, m.other_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
        m.oidc, m.oidc_key = oidc, oidc_key
        m.ingress_ca, cert, key = _ca_and_cert(state, "bookinfo.example.com")
        m.http_port, m.https_port, m.tls_port, m.tcp_port, m.tls_tcp_port = (free_port(NODES["gw"]) for _ in range(5))
        backend, m.backend_ca, m.backend_cert = _backend(state)
        resources = state / "ingress.yaml"
        resources.write_text(_resources(_jwks(m.key), m.http_port, m.https_port, cert, key,
                                        _passthrough(m.tls_port, backend.server_address[1]))
                             + _gateway_authorization(oidc.issuer, m.http_port, (m.tcp_port, m.tls_port))
                             + _tcp_resources(m.tcp_port, m.tls_tcp_port))
        meshctl(m, "apply", "-f", str(resources), timeout=60)
        try:
            yield m
        finally:
            backend.shutdown()
            backend.server_close()
            for echo in echoes:
                echo.close()


def _token(mesh, key=None, ttl: int = 300, **claims) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + ttl, **claims}
    return jwt.encode(payload, key or mesh.key, algorithm="RS256", headers={"kid": "k1"})


def _request(host: str, port: int, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def _details(mesh, path: str, token: str | None = None) -> int:
    d = mesh.defs["details-v1"]
    headers = {"Host": "details"} | ({"Authorization": f"Bearer {token}"} if token else {})
    return _request(NODES[d["node"]], d["connect"]["sidecar_service"]["port"], "GET", path, headers)[0]


def _front(mesh, method: str = "GET", path: str = "/", headers: dict | None = None) -> tuple[int, dict, bytes]:
    return _request(NODES["gw"], mesh.http_port, method, path, {"Host": "front.example.com", **(headers or {})})


def _converged(check, what: str) -> None:
    wait_until(check, CONVERGE_S, what, interval=0.2)


def test_request_authentication_on_details(mesh):
    _converged(lambda: _details(mesh, "/details/0") == 403, "details refuses a request without a token")
    assert _details(mesh, "/details/0", _token(mesh)) == 200
    assert _details(mesh, "/details/0", _token(mesh, ttl=-120)) == 401  # expired
    assert _details(mesh, "/details/0", _token(mesh, key=mesh.other_key)) == 401  # signed by a key not in the JWKS
    assert _details(mesh, "/health") == 200  # no token passes RequestAuthentication; no policy on /health
    assert _details(mesh, "/health", _token(mesh, group="blocked")) == 403  # a claim denied


def test_claim_routed_at_the_gateway(mesh):
    def body(token: str | None) -> bytes:
        return _front(mesh, headers={"Authorization": f"Bearer {token}"} if token else {})[2]

    _converged(lambda: b"bookinfo details" in body(_token(mesh, group="beta")), "a beta token routed to details")
    assert b"bookinfo details" not in body(None)  # productpage's index
    assert b"bookinfo details" not in body(_token(mesh, group="stable"))
    # A client's own header of that name routes nothing: the route reads the verified payload only.
    assert b"bookinfo details" not in _front(mesh, headers={"@request.auth.claims.group": "beta"})[2]
    assert _front(mesh, headers={"Authorization": f"Bearer {_token(mesh, key=mesh.other_key)}"})[0] == 401


def test_cors_preflight(mesh):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    _converged(lambda: _front(mesh, "OPTIONS", "/productpage", preflight)[1].get("access-control-allow-origin")
               == "https://app.example.com", "the gateway answers the CORS preflight")
    status, headers, _ = _front(mesh, "OPTIONS", "/productpage", preflight)
    assert status == 200 and "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-max-age"] == "3600"
    other = _front(mesh, "OPTIONS", "/productpage", {**preflight, "Origin": "https://evil.example"})[1]
    assert "access-control-allow-origin" not in other
    status, headers, _ = _front(mesh, "GET", "/productpage?format=json", {"Origin": "https://app.example.com"})
    assert status == 200 and headers.get("access-control-allow-origin") == "https://app.example.com"


def _tls_get(mesh, sni: str, cafile: str, check_hostname: bool, port: int | None = None,
             ) -> tuple[x509.Certificate, int, bytes]:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = check_hostname
    with socket.create_connection((NODES["gw"], port or mesh.https_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            tls.sendall(f"GET /productpage?format=json HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    return cert, int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


def test_gateway_tls_ingress_by_sni(mesh):
    def served() -> bool:
        try:
            return _tls_get(mesh, "bookinfo.example.com", str(mesh.ingress_ca), True)[1] == 200
        except (OSError, ssl.SSLError):
            return False

    _converged(served, "the HTTPS server for bookinfo.example.com")
    cert, status, _ = _tls_get(mesh, "bookinfo.example.com", str(mesh.ingress_ca), True)
    assert status == 200
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bookinfo.example.com"
    # The other server of the port, by SNI: the gateway's own certificate from the mesh CA.
    cert, status, _ = _tls_get(mesh, "shop.example.com", mesh.cp_info["ca_file"], False)
    assert status == 200
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert any(u.startswith("spiffe://") and u.endswith("/sa/ingress-gateway") for u in uris), uris
    with pytest.raises(OSError):  # a name no server has: no chain matches, Envoy closes the handshake
        _tls_get(mesh, "unknown.example.com", str(mesh.ingress_ca), False)


def test_gateway_passthrough_by_sni(mesh):
    """A PASSTHROUGH server: the client's TLS reaches the backend's own TLS server through the gateway, verified
    against the backend's CA with its host name, and the certificate seen is the backend's (not the gateway's)."""
    def served() -> bool:
        try:
            return _tls_get(mesh, PASSTHROUGH_HOST, str(mesh.backend_ca), True, mesh.tls_port)[1] == 200
        except (OSError, ssl.SSLError):
            return False

    _converged(served, "the PASSTHROUGH server for tls.backend.test")
    cert, status, body = _tls_get(mesh, PASSTHROUGH_HOST, str(mesh.backend_ca), True, mesh.tls_port)
    assert status == 200 and body == b"the backend's own TLS"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == PASSTHROUGH_HOST
    own = x509.load_pem_x509_certificate(mesh.backend_cert.read_bytes())
    assert cert.fingerprint(hashes.SHA256()) == own.fingerprint(hashes.SHA256())  # the backend's, byte for byte
    with pytest.raises(OSError):  # a name no tls[] rule routes: no chain matches
        _tls_get(mesh, "other.backend.test", str(mesh.backend_ca), False, mesh.tls_port)


def _gateway_upstream_requests(mesh) -> int:
    """Requests the gateway's Envoy sent to any backend so far (every cluster's upstream_rq_total but JWKS and xDS)."""
    url = f"http://{mesh.layout.admin['gw']}/stats?filter=upstream_rq_total$"
    with urllib.request.urlopen(url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(int(v) for name, _, v in (line.rpartition(": ") for line in lines)
               if v.isdigit() and not name.startswith(("cluster.jwks|", "cluster.meshcore_xds", "cluster.xds")))


def _oidc_token(mesh, key=None) -> str:
    now = int(time.time())
    return jwt.encode({"iss": mesh.oidc.issuer, "sub": "member", "iat": now, "exp": now + 300}, key or mesh.oidc_key,
                      algorithm="RS256", headers={"kid": "k1"})


def test_gateway_authorization(mesh):
    _converged(lambda: _front(mesh, path="/blocked/first")[0] == 403, "a DENY at the gateway")
    before = _gateway_upstream_requests(mesh)
    status, _headers, body = _front(mesh, path="/blocked/again")
    assert status == 403 and b"RBAC" in body
    assert _gateway_upstream_requests(mesh) == before  # answered by the gateway: no backend was called
    page = "/productpage?format=json"
    # The client's address as the gateway trusts X-Forwarded-For (one trusted proxy: the peer names the client).
    assert _front(mesh, path=page, headers={"X-Forwarded-For": "203.0.113.5"})[0] == 403
    assert _front(mesh, path=page, headers={"X-Forwarded-For": "198.51.100.1"})[0] == 200
    # A token required on members' requests, accepted from the issuer discovered through OIDC (keys over HTTPS).
    members = {"x-tier": "members"}
    assert _front(mesh, path=page, headers=members)[0] == 403
    bearer = {**members, "Authorization": f"Bearer {_oidc_token(mesh)}"}
    _converged(lambda: _front(mesh, path=page, headers=bearer)[0] == 200, "a token of the OIDC-discovered issuer")
    assert mesh.oidc.hits.get("/.well-known/openid-configuration", 0) >= 1 and mesh.oidc.hits.get("/keys", 0) >= 1
    wrong = {**members, "Authorization": f"Bearer {_oidc_token(mesh, mesh.other_key)}"}
    assert _front(mesh, path=page, headers=wrong)[0] == 401


def test_authz_check_with_a_token(mesh, tmp_path):
    token = tmp_path / "token"
    token.write_text(_token(mesh))
    args = ("authz", "check", "--from", "productpage", "--to", "details", "--path", "/details/0", "-o", "json")
    out = json.loads(meshctl(mesh, *args, "--jwt", str(token)).stdout)
    [result] = out["results"]
    assert out["allowed"] and result["token"]["signature"] == "verified" and result["token"]["status"] == 0
    token.write_text(_token(mesh, ttl=-120))
    [result] = json.loads(meshctl(mesh, *args, "--jwt", str(token)).stdout)["results"]
    assert not result["allowed"] and result["action"] == "RequestAuthentication" and "expired" in result["reason"]
    assert not json.loads(meshctl(mesh, *args).stdout)["allowed"]  # no token: details-jwt's DENY
    # At the ingress gateway, per listener: the client X-Forwarded-For names (remoteIpBlocks).
    at_gateway = ("authz", "check", "--to", "ingress-gateway", "--path", "/productpage", "-o", "json")
    out = json.loads(meshctl(mesh, *at_gateway, "--remote-ip", "203.0.113.5").stdout)
    assert out["results"] and not any(r["allowed"] for r in out["results"])
    assert mesh.http_port in {r["port"] for r in out["results"]}
    assert json.loads(meshctl(mesh, *at_gateway, "--remote-ip", "198.51.100.1").stdout)["allowed"]


def _echo(port: int, source: str = ALLOWED_CLIENT, tls: ssl.SSLContext | None = None, sni: str = "") -> bytes:
    """One line through the gateway's ``port`` from client address ``source``: the echo's answer (``v1 hello``), or
    b"" when the connection was refused or cut before answering."""
    try:
        with socket.create_connection((NODES["gw"], port), timeout=5, source_address=(source, 0)) as raw:
            conn = tls.wrap_socket(raw, server_hostname=sni) if tls is not None else raw
            conn.sendall(b"hello\n")
            data = b""
            while not data.endswith(b"\n") and (chunk := conn.recv(4096)):
                data += chunk
            return data
    except (OSError, ssl.SSLError):
        return b""


def test_gateway_tcp_server_by_weight(mesh):
    """Istio's tcp-echo through the gateway: each connection reaches v1 or v2 by the VirtualService's 80/20."""
    _converged(lambda: _echo(mesh.tcp_port) in (b"v1 hello\n", b"v2 hello\n"), "the gateway's TCP server")
    n = 100
    answers = [_echo(mesh.tcp_port) for _ in range(n)]
    counts = {v: answers.count(f"{v} hello\n".encode()) for v in ("v1", "v2")}
    assert sum(counts.values()) == n, answers
    mean, sigma = n * 0.2, (n * 0.2 * 0.8) ** 0.5
    assert abs(counts["v2"] - mean) <= 4 * sigma, counts  # 20 of 100 expected, +/- 16


def test_gateway_tls_terminated_tcp_server(mesh):
    """A TLS server terminated at the gateway with the mesh CA's certificate, the bytes behind it routed by tcp[]."""
    ctx = ssl.create_default_context(cafile=mesh.cp_info["ca_file"])
    ctx.check_hostname = False  # the gateway's SVID names its SPIFFE ID, not echo.example.com
    _converged(lambda: _echo(mesh.tls_tcp_port, tls=ctx, sni="echo.example.com") == b"v2 hello\n",
               "the terminated TLS server routed to tcp-echo v2")
    assert _echo(mesh.tls_tcp_port) == b""  # plaintext is no TLS handshake: no chain takes it


def test_gateway_tcp_authorization(mesh):
    """The network RBAC on the gateway's TCP chains: one client address denied on the TCP and PASSTHROUGH servers."""
    _converged(lambda: _echo(mesh.tcp_port, DENIED_CLIENT) == b"", "the DENY of one client on the TCP server")
    assert _echo(mesh.tcp_port, ALLOWED_CLIENT) in (b"v1 hello\n", b"v2 hello\n")
    assert _echo(mesh.tcp_port, DENIED_CLIENT) == b""

    def passthrough(source: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(mesh.backend_ca))
        try:
            with socket.create_connection((NODES["gw"], mesh.tls_port), timeout=5, source_address=(source, 0)) as raw:
                with ctx.wrap_socket(raw, server_hostname=PASSTHROUGH_HOST):
                    return True
        except (OSError, ssl.SSLError):
            return False

    _converged(lambda: passthrough(ALLOWED_CLIENT), "the PASSTHROUGH server for an allowed client")
    assert not passthrough(DENIED_CLIENT)
