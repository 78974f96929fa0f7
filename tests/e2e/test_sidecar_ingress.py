"""End to end, with a real Envoy: Sidecar ``ingress[]`` makes an app reachable where its registration does not say,
and terminates TLS for a caller outside the mesh on a PERMISSIVE port.

One VM (n1): reviews (the caller, upstreams details and ratings), details and ratings. The apps the test itself runs
listen elsewhere than registered: details' on a unix socket, ratings' on another port of 127.0.0.1 (the sample apps
on the registered ports keep answering as themselves, so every answer says which app it came from). details'
Sidecar sends its inbound traffic to the socket; ratings' Sidecar, described by its sidecar port, sends it to the
other port and serves TLS with a test CA's certificate to callers outside the mesh, while reviews keeps reaching it
over the mesh's mTLS.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import ssl
import threading
from pathlib import Path

import pytest
from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until

from ._topology import CONTROL_PLANE, free_port, loopback, meshctl, serving
from .test_istio_egress import _Answer  # answers {"server": <its server's label>, ...}
from .test_istio_ingress import _ca_and_cert  # a test CA and a server certificate it signed: (CA, cert, key) files

N1 = loopback(81)
RATINGS_NAME = "ratings.partners.test"  # the name outside callers know ratings by (its certificate's SAN)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # http.server wants a (host, port)-like client address
        conn, _ = super().get_request()
        return conn, ("unix", 0)


def _service(node_dir: Path, name: str, upstreams=()) -> dict:
    ups = [{"destination_name": u, "local_bind_address": N1, "local_bind_port": free_port(N1)} for u in upstreams]
    body = {"name": name, "id": f"{name}-v1", "port": free_port(N1), "meta": {"version": "v1"},
            "connect": {"sidecar_service": {"port": free_port(N1),
                                            "proxy": {"local_service_address": N1, "upstreams": ups}}}}
    (node_dir / f"{name}.json").write_text(json.dumps({"service": body}, indent=2))
    return body


def _resources(details_port: int, socket_path: Path, ratings_sidecar_port: int, other_port: int, cert: Path,
               key: Path) -> str:
    return f"""
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {{name: details}}
spec:
  workloadSelector: {{labels: {{app: details}}}}
  ingress:
  - port: {{number: {details_port}, protocol: HTTP, name: http}}
    defaultEndpoint: unix://{socket_path}
---
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {{name: ratings}}
spec:
  workloadSelector: {{labels: {{app: ratings}}}}
  ingress:
  - port: {{number: {ratings_sidecar_port}, protocol: HTTP, name: https-partners}}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{other_port}
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {{name: ratings}}
spec: {{selector: {{matchLabels: {{app: ratings}}}}, mtls: {{mode: PERMISSIVE}}}}
"""


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """The apps listening where the registrations do not say: a unix socket and another port of 127.0.0.1."""
    root = tmp_path_factory.mktemp("ingress-apps")
    sock = root / "details.sock"
    unix = _UnixServer(str(sock), _Answer)
    unix.label = "unix-socket"  # type: ignore[attr-defined]
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    other.label = "other-port"  # type: ignore[attr-defined]
    for s in (unix, other):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield {"socket": sock, "other_port": other.server_address[1], "files": _ca_and_cert(root, RATINGS_NAME)}
    for s in (unix, other):
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, apps):
    state = tmp_path_factory.mktemp("ingress-mesh")
    n1 = state / "consul.d" / "n1"
    n1.mkdir(parents=True)
    (n1 / "node.json").write_text(json.dumps({"node_name": "n1", "advertise_addr": N1, "datacenter": "dc1"}))
    reviews = _service(n1, "reviews", ["details", "ratings"])
    details, ratings = _service(n1, "details"), _service(n1, "ratings")
    layout = MeshLayout(
        state_dir=state, catalog_dir=state / "consul.d",
        xds_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", api_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
        http_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", admin={"n1": f"{N1}:{free_port(N1)}"},
        agent_refresh="2s")
    m = LocalMesh(layout, progress=lambda msg: print("ingress mesh:", msg, flush=True))
    m.state = state
    details_up, ratings_up = (u["local_bind_port"] for u in reviews["connect"]["sidecar_service"]["proxy"]["upstreams"])
    m.details_url, m.ratings_url = f"http://{N1}:{details_up}/details/0", f"http://{N1}:{ratings_up}/ratings/0"
    m.url = m.details_url
    m.ratings_sidecar = ratings["connect"]["sidecar_service"]["port"]
    with serving(m, artifacts="e2e-sidecar-ingress-logs"):
        ca, cert, key = apps["files"]
        resources = state / "ingress.yaml"
        resources.write_text(_resources(details["port"], apps["socket"], m.ratings_sidecar, apps["other_port"], cert,
                                        key))
        meshctl(m, "apply", "-f", str(resources))
        yield m


def _server(url: str) -> str:
    status, body = http_get(url)
    return json.loads(body).get("server", "") if status == 200 else f"status {status}"


def _https_server(port: int, ca: Path) -> str:
    """Which app answers a caller outside the mesh speaking TLS (verifying RATINGS_NAME against the test CA) to
    ratings' sidecar port."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((N1, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=RATINGS_NAME) as s:
        s.sendall(f"GET /ratings/0 HTTP/1.1\r\nHost: {RATINGS_NAME}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["server"]


def test_default_endpoint_reaches_an_app_on_a_unix_socket(mesh):
    """reviews -> details over mTLS; details' sidecar forwards to the socket, not to the registered port."""
    wait_until(lambda: _server(mesh.details_url) == "unix-socket", 60, "details' sidecar to forward to the socket")


def test_tls_for_callers_outside_the_mesh_on_a_permissive_port(mesh, apps):
    """A caller outside the mesh speaks TLS with the Sidecar's certificate and reaches the app on its other port;
    reviews still reaches ratings over the mesh's mTLS (its SNI is the service name); plaintext is refused."""
    ca = apps["files"][0]
    wait_until(lambda: _https_server(mesh.ratings_sidecar, ca) == "other-port", 60,
               "ratings' sidecar to terminate TLS for outside callers")
    wait_until(lambda: _server(mesh.ratings_url) == "other-port", 30, "reviews to reach ratings' other port by mTLS")
    with pytest.raises(OSError):  # no plaintext chain any more: the connection is closed unanswered
        status, _ = http_get(f"http://{N1}:{mesh.ratings_sidecar}/ratings/0")
        raise AssertionError(f"a plaintext caller got an answer ({status})")
