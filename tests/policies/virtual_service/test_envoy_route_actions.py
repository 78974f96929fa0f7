"""Route actions and port-level circuit breakers through a real Envoy, with traffic (issue 17's e2e list):
web's sidecar calls api over its outbound listener (plaintext: the mesh is PERMISSIVE and the rule's tls DISABLE, so no
certificates are needed), and Envoy answers a redirect and a direct response itself, rewrites a path before api sees
it, and sheds what api's port-level connection pool cannot hold."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .._catalog import build, write_catalog
from .._envoy import envoy_before_servers

POLICIES = """
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: mesh, namespace: meshcore-system}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    tls: {mode: DISABLE}
    connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 100}}
    portLevelSettings:
    - port: {number: API_PORT}
      connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 301}
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /api/}
    route: [{destination: {host: api}}]
  - route: [{destination: {host: api}}]
"""


class _Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    slow = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web", "upstreams": ["api"]}, {"name": "api"}])
    built = build(root, POLICIES.replace("API_PORT", str(defs["api"]["port"])))
    server = ThreadingHTTPServer(("127.0.0.1", defs["api"]["port"]), _Api)
    with envoy_before_servers(built, defs, [server], tmp_path_factory.mktemp("envoy"), outbound=True) as envoy:
        [up] = defs["web"]["connect"]["sidecar_service"]["proxy"]["upstreams"]
        yield {"port": up["local_bind_port"], "envoy": envoy}


def _get(world, path: str) -> tuple[int, dict[str, str], bytes]:
    deadline = time.monotonic() + 30
    while True:  # web's outbound listener comes up with the rest of the config: retry until it answers
        conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=10)
        try:
            conn.request("GET", path, headers={"Host": "api"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def test_redirect_direct_response_and_rewrite(world):
    status, headers, _ = _get(world, "/old")
    assert status == 301 and headers["location"].endswith("/new"), headers
    status, _, body = _get(world, "/teapot")
    assert (status, body) == (418, b"short and stout")
    status, _, body = _get(world, "/v1/items?x=1")
    assert status == 200 and json.loads(body)["path"] == "/api/items?x=1"  # what api saw
    status, _, body = _get(world, "/plain")
    assert status == 200 and json.loads(body)["path"] == "/plain"


def test_the_ports_connection_pool_sheds_what_it_cannot_hold(world):
    """api's own port's entry (one connection, one pending request) wins over the host level (100 of each)."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _get(world, f"/slow/{i}"), range(8)))
    shed = [h for s, h, _ in answers if s == 503]
    assert shed and all(h.get("x-envoy-overloaded") == "true" for h in shed), [(s, h) for s, h, _ in answers]
    assert any(s == 200 for s, _, _ in answers)
    stats = world["envoy"].stats("overflow")
    overflow = {k: v for k, v in stats.items() if k.startswith("cluster.") and "api|web" in k
                and k.endswith(("upstream_rq_pending_overflow", "upstream_cx_overflow"))}
    assert sum(overflow.values()) >= len(shed), stats
