"""Dry-run policies against a real Envoy: a request a dry-run DENY matches passes, and Envoy counts it as
``shadow_denied`` (per rule: ``rbac.policy.<ns>/<name>[i].shadow_denied``); the enforced policy beside it still denies."""

from __future__ import annotations

import http.client
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

from .._catalog import build, write_catalog
from .._envoy import StaticEnvoy, wait_listening

PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")
POLICIES = PERMISSIVE + """apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-post, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"""


class _App(BaseHTTPRequestHandler):
    def _ok(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _ok

    def log_message(self, *args) -> None:
        pass


def _status(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers={"Host": "web"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_dry_run_deny_counts_without_denying(tmp_path):
    defs = write_catalog(tmp_path / "catalog", [{"name": "web"}])
    built = build(tmp_path / "catalog", POLICIES)
    app = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App)
    app.daemon_threads = True
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        (tmp_path / "envoy").mkdir()
        with StaticEnvoy(built, tmp_path / "envoy") as envoy:
            port = defs["web"]["connect"]["sidecar_service"]["port"]
            wait_listening("127.0.0.1", port)
            assert _status(port, "POST", "/x") == 200  # the dry-run DENY matches: counted, not enforced
            assert _status(port, "POST", "/y") == 200
            assert _status(port, "GET", "/x") == 200
            assert _status(port, "GET", "/admin") == 403  # the enforced DENY beside it still denies

            def shadow() -> dict[str, int]:
                return {k.removeprefix("http.inbound_web-v1.rbac."): v for k, v in envoy.stats().items()
                        if "shadow" in k}

            want = {"policy.default/deny-post[0].shadow_denied": 2, "shadow_denied": 2, "shadow_allowed": 2}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and shadow() != want:
                time.sleep(0.1)
            assert shadow() == want  # GET /x and GET /admin: the dry-run DENY would have allowed them
            assert envoy.stats()["http.inbound_web-v1.rbac.authz.deny.denied"] == 1  # only /admin was denied
    finally:
        app.shutdown()
        app.server_close()
