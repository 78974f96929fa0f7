"""CUSTOM AuthorizationPolicy with an HTTP external authorizer, in a real Envoy (plaintext inbound chain).

The authorizer (a loopback HTTP server of this test) allows a request whose ``x-user`` is ``alice`` (and tells the
workload ``x-authz-user``), denies others with 401 and a ``www-authenticate`` header; it counts its checks, so the
test sees that only requests matching the CUSTOM rules (paths under ``/admin``) are sent to it. DENY still applies
after an allowed check; a dead authorizer is a 403 (``failOpen`` false). Provider and policy validation too.
"""

from __future__ import annotations

import http.client
import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.authz import Request, decide
from meshcore.authz.providers import parse_mesh_config
from meshcore.catalog.files import FileCatalogSource
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo

from .._catalog import free_port, write_catalog
from .._envoy import HeadersApp, StaticEnvoy, wait_listening

PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def ap(name: str, spec: str, annotations: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    meta = f"{{name: {name}, namespace: default{annotations}}}"
    return f"apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec:\n{body}\n---\n"


POLICIES = PERMISSIVE + ap("web-custom", """
    selector: {matchLabels: {app: web}}
    action: CUSTOM
    provider: {name: checker}
    rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
    """) + ap("web-deny", """
    selector: {matchLabels: {app: web}}
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin/forbidden"]}}]}]
    """)


class _Checker(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    checks: list[str] = []

    def _answer(self) -> None:
        type(self).checks.append(self.path)
        if self.headers.get("x-user") == "alice":
            self.send_response(200)
            self.send_header("x-authz-user", "alice")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"denied by the checker\n"
        self.send_response(401)
        self.send_header("www-authenticate", "Bearer")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _settings(port: int) -> MeshSettings:
    return MeshSettings(ext_authz_providers=parse_mesh_config(f"""
extensionProviders:
- name: checker
  envoyExtAuthzHttp:
    service: 127.0.0.1
    port: {port}
    timeout: 1s
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-user]
    headersToUpstreamOnAllow: [x-authz-user]
    headersToDownstreamOnDeny: [www-authenticate]
"""))


def _snapshot(root, text: str, settings: MeshSettings) -> MeshSnapshot:
    catalog = FileCatalogSource(root).poll(None, 0).catalog
    return MeshSnapshot.build(catalog, load_documents(text, "policies.yaml"), settings=settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}])
    checker = ThreadingHTTPServer(("127.0.0.1", free_port()), _Checker)
    app = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), HeadersApp)
    for s in (checker, app):
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    snap = _snapshot(root, POLICIES, _settings(checker.server_address[1]))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    try:
        with StaticEnvoy(built, tmp_path_factory.mktemp("envoy")) as envoy:
            port = defs["web"]["connect"]["sidecar_service"]["port"]
            wait_listening("127.0.0.1", port)
            yield {"port": port, "root": root, "snapshot": snap, "built": built, "envoy": envoy, "checker": checker}
    finally:
        for s in (checker, app):
            s.shutdown()
            s.server_close()


def _get(world, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "web", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_only_matching_requests_are_checked(world):
    _Checker.checks.clear()
    assert _get(world, "/public")[0] == 200
    assert _Checker.checks == []  # no CUSTOM rule matches: the authorizer is not asked
    status, headers, body = _get(world, "/admin/users")
    assert (status, headers.get("www-authenticate"), body) == (401, "Bearer", b"denied by the checker\n")
    assert _Checker.checks == ["/check/admin/users"]  # pathPrefix + the request's path
    status, _, body = _get(world, "/admin/users", {"x-user": "alice"})
    assert status == 200 and json.loads(body)["x-authz-user"] == "alice"  # headersToUpstreamOnAllow


def test_deny_still_applies_after_an_allowed_check(world):
    assert _get(world, "/admin/forbidden", {"x-user": "alice"})[0] == 403


def test_evaluator_says_the_authorizer_decides(world):
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of("web")
    decision = decide(snap.resources, inst.labels, inst.namespace, Request(path="/admin/x", port=inst.port))
    assert decision.allowed and "CUSTOM policy default/web-custom rule 0 matches" in decision.reason
    assert "CUSTOM" not in decide(snap.resources, inst.labels, inst.namespace, Request(path="/x", port=inst.port)).reason


def test_unreachable_authorizer_fails_closed(world, tmp_path):
    dead = _settings(free_port())
    built = build_proxy(_snapshot(world["root"], POLICIES, dead), ProxyInfo(node="n1", secrets_dir="/s"))
    [listener] = [l for l in built["type.googleapis.com/envoy.config.listener.v3.Listener"] if l.name.startswith("inbound:")]
    listener.address.socket_address.port_value = port = free_port()
    with StaticEnvoy(built, tmp_path):
        wait_listening("127.0.0.1", port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/admin/x", headers={"Host": "web", "x-user": "alice"})
        assert conn.getresponse().status == 403
        conn.close()


def test_provider_problems_refuse_the_proxy(world):
    for text, expected in [
        (POLICIES.replace("name: checker", "name: other"), "provider 'other' is not among"),
        (POLICIES + ap("web-custom-2", """
            selector: {matchLabels: {app: web}}
            action: CUSTOM
            provider: {name: second}
            rules: [{}]
            """), "one workload uses one external authorizer"),
        (POLICIES.replace("{name: web-custom, namespace: default}",
                          "{name: web-custom, namespace: default, annotations: {istio.io/dry-run: 'true'}}"),
         "no dry run"),
    ]:
        with pytest.raises(SnapshotInvalid, match=expected):
            build_proxy(_snapshot(world["root"], text, world["snapshot"].settings), ProxyInfo(node="n1", secrets_dir="/s"))


def test_policy_and_mesh_config_validation():
    with pytest.raises(ValidationError) as info:
        load_documents(ap("a", "action: CUSTOM\nrules: [{}]") + ap("b", "provider: {name: x}"), "p.yaml")
    messages = {(e.document, e.path): e.message for e in info.value.errors}
    assert "extensionProviders" in messages[(0, "spec.provider")]
    assert "belongs to action: CUSTOM" in messages[(1, "spec.provider")]
    with pytest.raises(ValidationError) as info:
        parse_mesh_config("extensionProviders:\n- {name: a, envoyExtAuthzHttp: {service: x, port: 0}}\n"
                          "- {name: a, envoyExtAuthzGrpc: {service: x, port: 1}, zipkin: {}}\n- {name: b}\n")
    paths = {e.path: e.message for e in info.value.errors}
    assert "extensionProviders[0].envoyExtAuthzHttp.port" in paths
    assert "not an external authorizer" in paths["extensionProviders[1].zipkin"]
    assert "exactly one of" in paths["extensionProviders[2]"]


def test_golden_case_is_accepted_by_envoy(tmp_path):
    from tests.traffic.test_build import _validate_with_envoy
    from tests.xds.test_build_golden import CASES, SETTINGS
    from tests.xds.test_build_golden import _snapshot as golden_snapshot

    text, node = CASES["vm1-authz-ext-authz"]
    built = build_proxy(golden_snapshot(text, SETTINGS["vm1-authz-ext-authz"]),
                        ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mesh_config_flag(tmp_path):
    from meshcore.controlplane.daemon import _mesh_config
    from meshcore.errors import ConfigError

    path = tmp_path / "mesh.yaml"
    path.write_text("extensionProviders:\n- {name: g, envoyExtAuthzGrpc: {service: authz.internal, port: 9000}}\n")
    [provider] = _mesh_config(str(path)).ext_authz_providers
    assert (provider.name, provider.kind, provider.cluster) == ("g", "envoyExtAuthzGrpc", "ext_authz|g")
    assert _mesh_config("").ext_authz_providers == ()
    with pytest.raises(ConfigError, match="--mesh-config"):
        _mesh_config(str(tmp_path / "missing.yaml"))


def test_grpc_provider_is_accepted_by_envoy(tmp_path):
    from tests.traffic.test_build import _validate_with_envoy
    from tests.xds.test_build_golden import CASES, SETTINGS
    from tests.xds.test_build_golden import _snapshot as golden_snapshot

    text, node = CASES["vm1-authz-ext-authz"]
    built = build_proxy(golden_snapshot(text.replace("name: opa", "name: authz-grpc"), SETTINGS["vm1-authz-ext-authz"]),
                        ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    assert any(cl.name == "ext_authz|authz-grpc" for cl in built["type.googleapis.com/envoy.config.cluster.v3.Cluster"])
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
