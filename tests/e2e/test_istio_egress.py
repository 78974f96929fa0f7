"""End to end, with real Envoys: services outside the mesh (ServiceEntry), Sidecar scoping, the outbound traffic
policy, VirtualService tls routes by SNI, TLS origination (DestinationRule tls SIMPLE and MUTUAL) and tls DISABLE
towards a PERMISSIVE mesh service.

One mesh of two VMs. n1 runs productpage, details, reviews and an ingress gateway whose upstreams are productpage
and ``api.egress.test``, a ServiceEntry host (STATIC, a loopback HTTP server this test runs: the "external"
service). n2 runs ratings, whose Sidecar lets it reach details only and gives its Envoy two egress listeners: HTTP
(Host routing, REGISTRY_ONLY) and TLS (SNI routing, passthrough) in front of two loopback TLS servers that a
VirtualService's ``tls[]`` rules pick by server name. The same HTTP egress listener reaches two loopback HTTPS
servers of a test CA by plain HTTP, the sidecar originating TLS (one server requires a client certificate).

An egress gateway (Istio's egress gateway with TLS origination): n1 also runs ``egress-gateway`` (kind
ingress-gateway, meta ``istio: egressgateway``) whose Gateway serves ``gateway.origin.test`` with ISTIO_MUTUAL; the
VirtualService bound to ``mesh`` and that Gateway sends ratings' requests for the host to the gateway over the mesh's
mTLS, and the gateway on to the HTTPS server, originating TLS per the host's DestinationRule.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshcore import naming
from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until

from ._topology import CONTROL_PLANE, free_port, loopback, meshctl, serving

N1, N2, OUTSIDE = loopback(61), loopback(62), loopback(63)
HTTP_HOST, SECURE_HOST, ALT_HOST = "api.egress.test", "secure.egress.test", "alt.egress.test"
ORIGIN = "origin.test"  # the TLS origination hosts: <check>.origin.test
VIA_GATEWAY = f"gateway.{ORIGIN}"  # reached through the egress gateway, which originates its TLS
PROXY_HOST = "proxy.egress.test"  # where the egress gateway sends the hosts nothing declares (the egressProxy check)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        client = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"), "")
        body = json.dumps({"server": self.server.label, "host": self.headers.get("Host", ""),  # type: ignore[attr-defined]
                           "client": client}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.egress.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return key, cert


def _issue(tmp: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str,
           sans: list[str]) -> tuple[Path, Path]:
    """A leaf certificate for ``name`` (DNS SANs ``sans``) signed by ``ca``: (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca[1].subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    paths = tmp / f"{name}.crt", tmp / f"{name}.key"
    paths[0].write_bytes(builder.sign(ca[0], hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _origin_servers(tmp: Path) -> tuple[dict[str, Any], ssl.SSLContext, ssl.SSLContext]:
    """The files of the TLS origination checks (the servers' CA, an unrelated CA, productpage's client certificate
    from a client CA) and the TLS of two HTTPS servers: one verifies nothing, one requires a client certificate."""
    server_ca, client_ca, other_ca = _ca("origin test CA"), _ca("client test CA"), _ca("unrelated test CA")
    cert, key = _issue(tmp, server_ca, "origin.test", [f"{h}.{ORIGIN}" for h in ("simple", "mutual", "nocert", "gateway")])
    client_cert, client_key = _issue(tmp, client_ca, "productpage-client", [])
    files = {"ca": tmp / "origin-ca.pem", "other_ca": tmp / "other-ca.pem", "client_ca": tmp / "client-ca.pem"}
    for path, (_key, ca_cert) in zip(files.values(), (server_ca, other_ca, client_ca)):
        path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    simple = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    simple.load_cert_chain(cert, key)
    mutual = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mutual.load_cert_chain(cert, key)
    mutual.load_verify_locations(files["client_ca"])
    mutual.verify_mode = ssl.CERT_REQUIRED
    return {**{k: str(v) for k, v in files.items()}, "client_cert": str(client_cert), "client_key": str(client_key),
            "client_issuer": client_ca}, simple, mutual


def _server(label: str, tls: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((OUTSIDE, 0), _Answer)
    server.label = label  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _service(node_dir: Path, host: str, body: dict) -> dict:
    (node_dir / f"{body['id']}.json").write_text(json.dumps({"service": body}, indent=2))
    return body


def _sidecar_service(node_dir: Path, host: str, name: str, upstreams=()) -> dict:
    ups = [{"destination_name": u, "local_bind_address": host, "local_bind_port": free_port(host)} for u in upstreams]
    return _service(node_dir, host, {
        "name": name, "id": f"{name}-v1", "port": free_port(host), "meta": {"version": "v1"},
        "connect": {"sidecar_service": {"port": free_port(host), "proxy": {"local_service_address": host,
                                                                           "upstreams": ups}}}})


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The services outside the mesh: one HTTP server, two TLS servers (a and b) with a self-signed certificate,
    and one more HTTP server no ServiceEntry declares."""
    tls = _self_signed(tmp_path_factory.mktemp("egress-tls"))
    files, simple, mutual = _origin_servers(tmp_path_factory.mktemp("egress-origin"))
    servers = {"http": _server("http"), "a": _server("a", tls), "b": _server("b", tls), "undeclared": _server("undeclared"),
               "origin": _server("origin", simple), "origin_mutual": _server("origin-mutual", mutual)}
    yield {**{k: s.server_address[1] for k, s in servers.items()}, **files}
    for s in servers.values():
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, outside):
    state = tmp_path_factory.mktemp("egress-mesh")
    n1, n2 = state / "consul.d" / "n1", state / "consul.d" / "n2"
    n1.mkdir(parents=True)
    n2.mkdir(parents=True)
    for d, name, addr in ((n1, "n1", N1), (n2, "n2", N2)):
        (d / "node.json").write_text(json.dumps({"node_name": name, "advertise_addr": addr, "datacenter": "dc1"}))
    productpage = _sidecar_service(n1, N1, "productpage", ["details", "reviews"])
    _sidecar_service(n1, N1, "details")
    _sidecar_service(n1, N1, "reviews")
    gw_ups = [{"destination_name": u, "local_bind_address": N1, "local_bind_port": free_port(N1)}
              for u in ("productpage", HTTP_HOST)]
    gateway = _service(n1, N1, {"name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway",
                                "port": gw_ups[0]["local_bind_port"], "proxy": {"upstreams": gw_ups}})
    _service(n1, N1, {"name": "egress-gateway", "id": "egress-gateway", "kind": "ingress-gateway",
                      "port": free_port(N1), "meta": {"version": "v1", "istio": "egressgateway"},
                      "proxy": {"upstreams": []}})
    ratings = _sidecar_service(n2, N2, "ratings", ["details", "reviews"])
    layout = MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d",
        xds_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", api_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        http_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        admin={"n1": f"{N1}:{free_port(N1)}", "n2": f"{N2}:{free_port(N2)}"}, agent_refresh="2s")
    m = LocalMesh(layout, progress=lambda msg: print("egress mesh:", msg, flush=True))
    m.state = state
    m.url = f"http://{N1}:{productpage['port']}/productpage?format=json"
    m.external_bind = f"http://{N1}:{gateway['proxy']['upstreams'][1]['local_bind_port']}"
    m.http_egress, m.tls_egress, m.egress_gateway = free_port(N2), free_port(N2), free_port(N1)
    m.ratings_details = f"http://{N2}:{ratings['connect']['sidecar_service']['proxy']['upstreams'][0]['local_bind_port']}"
    with serving(m, artifacts="e2e-istio-egress-logs"):
        resources = state / "egress.yaml"
        resources.write_text(_resources(m, outside, "REGISTRY_ONLY"))
        meshctl(m, "apply", "-f", str(resources))
        yield m


def _origin_entry(name: str, checks: list[str], port: int) -> str:
    """A ServiceEntry of ``<check>.origin.test`` hosts: a plain HTTP port 80 whose endpoint takes TLS on ``port``."""
    return (f"apiVersion: networking.mesh.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\n"
            f"spec: {{hosts: [{', '.join(f'{c}.{ORIGIN}' for c in checks)}], resolution: STATIC, "
            f"ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}], endpoints: [{{address: {OUTSIDE}}}]}}")


def _origin_rule(check: str, policy: str, outside: dict) -> str:
    """The DestinationRule of ``<check>.origin.test``: ``policy`` its trafficPolicy (``%(ca)s``: the files)."""
    return (f"apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: {check}}}\n"
            f"spec: {{host: {check}.{ORIGIN}, trafficPolicy: {{{policy % outside}}}}}")


def _resources(mesh, outside: dict, mode: str, egress_proxy: str = "") -> str:
    return f"""
apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HTTP_HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {outside['http']}}}]
  resolution: STATIC
  endpoints: [{{address: {OUTSIDE}}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [{SECURE_HOST}, {ALT_HOST}]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints:
  - {{address: {OUTSIDE}, ports: {{tls: {outside['a']}}}, labels: {{server: a}}}}
  - {{address: {OUTSIDE}, ports: {{tls: {outside['b']}}}, labels: {{server: b}}}}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: {SECURE_HOST}
  subsets:
  - {{name: a, labels: {{server: a}}}}
  - {{name: b, labels: {{server: b}}}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [{SECURE_HOST}, {ALT_HOST}]
  tls:
  - match: [{{sniHosts: [{SECURE_HOST}]}}]
    route: [{{destination: {{host: {SECURE_HOST}, subset: a}}}}]
  - match: [{{sniHosts: [{ALT_HOST}]}}]
    route: [{{destination: {{host: {SECURE_HOST}, subset: b}}}}]
---
{_origin_entry("origin", ["simple", "wrongca", "wrongsan"], outside["origin"])}
---
{_origin_entry("origin-mutual", ["mutual", "nocert"], outside["origin_mutual"])}
---
{_origin_rule("simple", "portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, caCertificates: %(ca)s}}]",
               outside)}
---
{_origin_rule("wrongca", f"tls: {{mode: SIMPLE, caCertificates: %(other_ca)s, sni: simple.{ORIGIN}}}", outside)}
---
{_origin_rule("wrongsan", f"tls: {{mode: SIMPLE, caCertificates: %(ca)s, sni: simple.{ORIGIN}, "
                          f"subjectAltNames: [someone-else.{ORIGIN}]}}", outside)}
---
{_origin_rule("mutual", "tls: {mode: MUTUAL, caCertificates: %(ca)s, clientCertificate: %(client_cert)s, "
                        "privateKey: %(client_key)s}", outside)}
---
{_origin_rule("nocert", "tls: {mode: SIMPLE, caCertificates: %(ca)s}", outside)}
---
{_origin_entry("origin-gateway", ["gateway"], outside["origin"])}
---
{_origin_rule("gateway", "portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, caCertificates: %(ca)s}}]",
               outside)}
---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {{name: egress-gateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {mesh.egress_gateway}, name: https, protocol: HTTPS}}
    bind: {N1}
    hosts: [{VIA_GATEWAY}]
    tls: {{mode: ISTIO_MUTUAL}}
  - port: {{number: {mesh.egress_gateway}, name: https, protocol: HTTPS}}
    name: any-host
    bind: {N1}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {{name: corporate-proxy}}
spec: {{hosts: [{PROXY_HOST}], resolution: STATIC, endpoints: [{{address: {OUTSIDE}}}],
        ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {outside['undeclared']}}}]}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: unknown-hosts}}
spec: {{hosts: ["*"], gateways: [egress-gateway], http: [{{route: [{{destination: {{host: {PROXY_HOST}}}}}]}}]}}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: egressgateway-for-origin}}
spec: {{host: egress-gateway, subsets: [{{name: origin}}]}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: direct-origin-through-egress-gateway}}
spec:
  hosts: [{VIA_GATEWAY}]
  gateways: [egress-gateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: egress-gateway, subset: origin, port: {{number: {mesh.egress_gateway}}}}}}}]
  - match: [{{gateways: [egress-gateway], port: {mesh.egress_gateway}}}]
    route: [{{destination: {{host: {VIA_GATEWAY}, port: {{number: 80}}}}}}]
---
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {{name: details-permissive}}
spec: {{selector: {{matchLabels: {{app: details}}}}, mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {{name: details-plaintext}}
spec: {{host: details, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
---
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {{name: ratings}}
spec:
  workloadSelector: {{labels: {{app: ratings}}}}
  egress:
  - hosts: ["./details", "./egress-gateway"]
  - port: {{number: {mesh.http_egress}, protocol: HTTP, name: egress-http}}
    bind: {N2}
    hosts: ["*/{HTTP_HOST}", "*/*.{ORIGIN}"]
  - port: {{number: {mesh.tls_egress}, protocol: TLS, name: egress-tls}}
    bind: {N2}
    hosts: ["*/*.egress.test"]
  outboundTrafficPolicy: {{mode: {mode}{egress_proxy}}}
"""


def _get(url: str, host: str | None = None) -> tuple[int, dict | bytes]:
    status, body = http_get(url, headers={"Host": host} if host else None)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _tls_server(port: int, sni: str) -> str:
    """Which TLS server answers a request sent to n2's TLS egress listener with ``sni`` (the app's own TLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((N2, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["server"]


def _clusters(mesh, node: str) -> set[str]:
    status, body = http_get(f"http://{mesh.layout.admin[node]}/config_dump?resource=dynamic_active_clusters")
    assert status == 200
    return {c["cluster"]["name"] for c in json.loads(body)["configs"]}


def test_an_upstream_naming_a_service_entry_host_reaches_it(mesh, outside):
    """The gateway's upstream api.egress.test goes to the ServiceEntry's STATIC endpoint, on its targetPort."""
    wait_until(lambda: _get(mesh.external_bind + "/x")[0] == 200, 60, "the ServiceEntry host to answer")
    status, body = _get(mesh.external_bind + "/x")
    assert status == 200 and body["server"] == "http"


def test_sidecar_scopes_the_clusters_a_proxy_receives(mesh):
    """ratings' Sidecar lists details only: n2's Envoy has no reviews cluster; n1 (no Sidecar) keeps its own."""
    wait_until(lambda: "egress:api.egress.test:80" in _clusters(mesh, "n2"), 60, "n2 to get its egress clusters")
    n2 = _clusters(mesh, "n2")
    assert "outbound:details|ratings" in n2
    assert not any(name.startswith("outbound:reviews") for name in n2), sorted(n2)
    assert "outbound:reviews|productpage" in _clusters(mesh, "n1")


def test_registry_only_egress_answers_declared_hosts_and_refuses_others(mesh, outside):
    url = f"http://{N2}:{mesh.http_egress}/y"
    wait_until(lambda: _get(url, HTTP_HOST)[0] == 200, 60, "the HTTP egress listener to serve api.egress.test")
    status, body = _get(url, HTTP_HOST)
    assert body["server"] == "http" and body["host"] == HTTP_HOST
    undeclared = f"{OUTSIDE}:{outside['undeclared']}"
    status, body = _get(url, undeclared)
    assert status == 502 and b"REGISTRY_ONLY" in body, (status, body)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _tls_server(mesh.tls_egress, "undeclared.example")


def test_tls_routes_pick_the_server_by_sni(mesh):
    wait_until(lambda: _tls_server(mesh.tls_egress, SECURE_HOST) == "a", 60, "the TLS egress listener to route by SNI")
    assert _tls_server(mesh.tls_egress, ALT_HOST) == "b"
    assert _tls_server(mesh.tls_egress, SECURE_HOST) == "a"


def test_tls_origination(mesh):
    """ratings speaks plain HTTP to its sidecar's egress listener; the sidecar originates TLS to the "external"
    servers: verified against the test CA (SIMPLE), refused with another CA or a SAN the server lacks, and with the
    client certificate the second server requires (MUTUAL; without it, that server refuses the handshake)."""
    url = f"http://{N2}:{mesh.http_egress}/tls"
    wait_until(lambda: _get(url, f"simple.{ORIGIN}")[0] == 200, 60, "TLS origination to simple.origin.test")
    status, body = _get(url, f"simple.{ORIGIN}")
    assert body["server"] == "origin" and body["client"] == ""
    wait_until(lambda: _get(url, f"mutual.{ORIGIN}")[0] == 200, 60, "MUTUAL origination to mutual.origin.test")
    status, body = _get(url, f"mutual.{ORIGIN}")
    assert body["server"] == "origin-mutual" and body["client"] == "productpage-client"
    # Refused in the handshake, each for its reason (the cluster's TLS counters on ratings' Envoy say which; Envoy's stat names have '_' for ':').
    for host, counter in (("wrongca", "fail_verify_error"), ("wrongsan", "fail_verify_san"),
                          ("nocert", "connection_error")):
        status, body = _get(url, f"{host}.{ORIGIN}")
        assert status == 503, (host, status, body)
        assert _stat(mesh, "n2", f"cluster.egress_{host}.{ORIGIN}_80.ssl.{counter}") > 0, host
    assert _stat(mesh, "n2", f"cluster.egress_simple.{ORIGIN}_80.ssl.fail_verify_error") == 0


def test_tls_origination_reloads_a_replaced_client_certificate(mesh, outside):
    """The client certificate's files are an SDS secret Envoy reads on the VM: replaced by a rename (a new key, then
    its certificate), the next connection presents the new one, with no config push."""
    wait_until(lambda: _get(f"http://{N2}:{mesh.http_egress}/tls", f"mutual.{ORIGIN}")[0] == 200, 60, "MUTUAL origination")
    staging = Path(outside["client_cert"]).parent / "staging"
    staging.mkdir()
    cert, key = _issue(staging, outside["client_issuer"], "productpage-client-rotated", [])
    os.replace(key, outside["client_key"])
    os.replace(cert, outside["client_cert"])

    def presented() -> str:
        status, body = _get(f"http://{N2}:{mesh.http_egress}/tls", f"mutual.{ORIGIN}")
        return body["client"] if status == 200 and isinstance(body, dict) else ""

    wait_until(lambda: presented() == "productpage-client-rotated", 30, "Envoy to present the replaced certificate")


def test_disable_towards_a_permissive_mesh_service_is_plaintext(mesh):
    """details accepts plaintext (PERMISSIVE) and its DestinationRule says DISABLE: ratings' sidecar calls it without
    TLS (requests served, no handshake on the cluster), as Istio's DISABLE."""
    def plaintext_cluster() -> bool:
        status, body = http_get(f"http://{mesh.layout.admin['n2']}/config_dump?resource=dynamic_active_clusters")
        found = [c["cluster"] for c in json.loads(body)["configs"] if c["cluster"]["name"] == "outbound:details|ratings"]
        return status == 200 and bool(found) and "transport_socket" not in found[0]

    wait_until(plaintext_cluster, 60, "ratings' details cluster to turn plaintext")
    prefix = "cluster.outbound_details|ratings"
    handshakes, served = _stat(mesh, "n2", f"{prefix}.ssl.handshake"), _stat(mesh, "n2", f"{prefix}.upstream_rq_200")
    for _ in range(3):
        wait_until(lambda: http_get(mesh.ratings_details + "/health")[0] == 200, 30, "details through ratings' upstream")
    assert _stat(mesh, "n2", f"{prefix}.upstream_rq_200") >= served + 3
    assert _stat(mesh, "n2", f"{prefix}.ssl.handshake") == handshakes


def _stat(mesh, node: str, name: str) -> int:
    status, body = http_get(f"http://{mesh.layout.admin[node]}/stats?format=json&filter=^{re.escape(name)}$")
    assert status == 200
    return sum(s.get("value", 0) for s in json.loads(body)["stats"] if s.get("name") == name)


def test_egress_gateway_originates_tls(mesh):
    """ratings' plain HTTP request for gateway.origin.test leaves through the egress gateway: ratings' Envoy sends it
    over the mesh's mTLS to the gateway's ISTIO_MUTUAL server (SNI: the host), the gateway originates TLS to the
    HTTPS server (verified against the test CA). The stats of both Envoys show the way it went; ratings has no
    cluster of its own to the host."""
    url = f"http://{N2}:{mesh.http_egress}/via-gateway"
    wait_until(lambda: _get(url, VIA_GATEWAY)[0] == 200, 60, "gateway.origin.test through the egress gateway")
    to_gateway = f"cluster.outbound_egress-gateway|ratings|origin_{mesh.egress_gateway}"
    onward = f"cluster.outbound_{VIA_GATEWAY}|egress-gateway"
    before = _stat(mesh, "n2", f"{to_gateway}.upstream_rq_200"), _stat(mesh, "n1", f"{onward}.upstream_rq_200")
    status, body = _get(url, VIA_GATEWAY)
    assert status == 200 and body["server"] == "origin" and body["host"] == VIA_GATEWAY
    assert _stat(mesh, "n2", f"{to_gateway}.upstream_rq_200") == before[0] + 1
    assert _stat(mesh, "n1", f"{onward}.upstream_rq_200") == before[1] + 1
    assert _stat(mesh, "n2", f"{to_gateway}.ssl.handshake") > 0 and _stat(mesh, "n1", f"{onward}.ssl.handshake") > 0
    assert not any(VIA_GATEWAY in name for name in _clusters(mesh, "n2"))


def test_allow_any_forwards_an_undeclared_destination(mesh, outside):
    """The same Sidecar with ALLOW_ANY: the undeclared server is reached by the name (here, the address) the Host
    header gives, through Envoy's dynamic forward proxy."""
    resources = mesh.state / "egress-allow.yaml"
    resources.write_text(_resources(mesh, outside, "ALLOW_ANY"))
    meshctl(mesh, "apply", "-f", str(resources))
    url = f"http://{N2}:{mesh.http_egress}/z"
    undeclared = f"{OUTSIDE}:{outside['undeclared']}"
    wait_until(lambda: _get(url, undeclared)[0] == 200, 60, "ALLOW_ANY to forward the undeclared destination")
    assert _get(url, undeclared)[1]["server"] == "undeclared"
    assert _get(url, HTTP_HOST)[1]["server"] == "http"


def test_egress_proxy_takes_undeclared_hosts(mesh, outside):
    """ALLOW_ANY with egressProxy (the egress gateway): a Host ratings' Sidecar does not declare goes to the gateway
    over the mesh's mTLS (not Envoy's dynamic forward proxy, which could not resolve the name), and the gateway's
    rules for any host send it on to the corporate proxy (here the server no ServiceEntry of the sidecar declares)."""
    resources = mesh.state / "egress-proxy.yaml"
    proxy = f", egressProxy: {{host: egress-gateway, port: {{number: {mesh.egress_gateway}}}}}"
    resources.write_text(_resources(mesh, outside, "ALLOW_ANY", proxy))
    meshctl(mesh, "apply", "-f", str(resources))
    url, unknown = f"http://{N2}:{mesh.http_egress}/p", "anything.unknown.test"
    wait_until(lambda: _get(url, unknown)[0] == 200, 60, "an undeclared host through the egress proxy")
    onward = f"cluster.outbound_{PROXY_HOST}|egress-gateway.upstream_rq_200"
    before = _stat(mesh, "n1", onward)
    status, body = _get(url, unknown)
    assert status == 200 and body["server"] == "undeclared" and body["host"] == unknown
    assert _stat(mesh, "n1", onward) == before + 1
    assert naming.EGRESS_PASSTHROUGH_CLUSTER not in _clusters(mesh, "n2")
    assert _get(url, HTTP_HOST)[1]["server"] == "http"  # a declared host still goes its own way
