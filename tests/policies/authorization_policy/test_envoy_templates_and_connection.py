"""Agreement through a real Envoy: header values that contain a text (``*text*``), path templates (``{*}``, ``{**}``: Envoy's URI template matcher) and the
connection keys ``destination.ip`` (the listener's address) and ``connection.sni`` (the TLS server name; a
plaintext caller sends none), each request decided by meshcore's evaluator as well.
"""

from __future__ import annotations

import socketserver
from http.server import ThreadingHTTPServer

import pytest

from meshcore.authz import Request, decide

from .._catalog import build, snapshot, write_catalog
from .._envoy import envoy_before_servers
from .test_envoy_rbac import PERMISSIVE, _App, _Echo, _http, _tcp_echoes, ap

POLICIES = PERMISSIVE + ap("web-deny", """
    selector: {matchLabels: {app: web}}
    action: DENY
    rules:
    - to: [{operation: {paths: ["/api/{*}/admin", "/private/{**}", "/logs/{*}/{**}.gz", "/store/{**}/cart"]}}]
    - to: [{operation: {paths: ["/ip/here"]}}]
      when: [{key: destination.ip, values: ["127.0.0.1"]}]
    - to: [{operation: {paths: ["/ip/elsewhere"]}}]
      when: [{key: destination.ip, values: ["10.0.0.0/8"]}]
    - to: [{operation: {paths: ["/sni/not-web"]}}]
      when: [{key: connection.sni, notValues: ["web"]}]
    - to: [{operation: {paths: ["/sni/any"]}}]
      when: [{key: connection.sni, values: ["*"]}]
    - to: [{operation: {paths: ["/cookie"]}}]
      when: [{key: "request.headers[cookie]", values: ["*session=admin*"]}]
    - to: [{operation: {paths: ["/Case/*", "*.PHP"], notPaths: ["/case/OPEN"], ignorePathCase: true}}]
    """) + ap("web-allow", """
    selector: {matchLabels: {app: web}}
    rules:
    - to: [{operation: {notPaths: ["/closed/{*}"]}}]
    """) + ap("db-deny", """
    selector: {matchLabels: {app: db}}
    action: DENY
    rules:
    - when: [{key: destination.ip, notValues: ["127.0.0.0/8"]}]
    - when: [{key: connection.sni, values: ["db.dc2.internal.meshcore"]}]
    """)

# path -> denied?
CASES = {
    "/api/v1/admin": True,
    "/api/v1/admin?x=1": True,
    "/api/%61/admin": True,  # normalized to /api/a/admin before RBAC
    "/api/v%201/admin": True,  # an escaped space stays escaped: '%' is a segment character
    "/api/v1/x/admin": False,  # {*} is one segment
    "/api//admin": False,  # merged to /api/admin: no segment left for {*}
    "/api/admin": False,
    "/private": False,  # /private/{**} needs the slash
    "/private/": True,
    "/private/a/b.txt": True,
    "/privates": False,
    "/logs/web/2026/12/a.gz": True,  # a suffix after the last operator
    "/logs/web.gz": False,
    "/logs/web/a.gzip": False,
    "/store/cart": False,  # {**} between two slashes: "/store/" + anything + "/cart"
    "/store//cart": False,  # merged to /store/cart before RBAC
    "/store/a/b/cart": True,
    "/ip/here": True,
    "/ip/elsewhere": False,
    "/sni/not-web": True,  # a plaintext caller has no SNI: not "web"
    "/sni/any": False,  # ... and "*" needs one
    "/closed/x": True,  # the ALLOW policy's notPaths template
    "/closed/x/y": False,
    "/open": False,
    "/case/x": True,  # ignorePathCase: /Case/* and *.PHP whatever the case, except /case/open
    "/CASE/Y": True,
    "/case/Open": False,
    "/x/index.php": True,
    "/caseless": False,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}, {"name": "db", "protocol": "tcp"}])
    built = build(root, POLICIES)
    servers = [ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App),
               socketserver.ThreadingTCPServer(("127.0.0.1", defs["db"]["port"]), _Echo)]
    with envoy_before_servers(built, defs, servers, tmp_path_factory.mktemp("envoy")):
        yield {"defs": defs, "snapshot": snapshot(root, POLICIES)}


def _decide(world, service: str, method: str = "", path: str = ""):
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of(service)
    request = Request(source_ip="127.0.0.1", method=method, path=path, host=service, port=inst.port,
                      protocol=inst.protocol, destination_ip=inst.mesh_address)
    return decide(snap.resources, inst.labels, inst.namespace, request)


def test_path_templates_and_connection_keys_agree_with_envoy(world):
    port = world["defs"]["web"]["connect"]["sidecar_service"]["port"]
    seen = {}
    for path in CASES:
        decision = _decide(world, "web", "GET", path)
        status = _http("127.0.0.1", port, "GET", path, {})
        seen[path] = (status, decision.allowed, decision.reason)
        assert status in (200, 403), seen[path]
    assert {p: s == 403 for p, (s, _, _) in seen.items()} == CASES, seen
    assert {p: not a for p, (_, a, _) in seen.items()} == CASES, seen


def test_tcp_connection_keys_agree_with_envoy(world):
    port = world["defs"]["db"]["connect"]["sidecar_service"]["port"]
    decision = _decide(world, "db")
    assert decision.allowed  # its listener is on 127.0.0.1, and a plaintext caller sends no SNI
    assert _tcp_echoes("127.0.0.1", port)
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of("db")
    through_gateways = Request(source_ip="127.0.0.1", port=inst.port, protocol="tcp", destination_ip=inst.mesh_address,
                               sni="db.dc2.internal.meshcore")
    denied = decide(snap.resources, inst.labels, inst.namespace, through_gateways)
    assert not denied.allowed and denied.policy == "default/db-deny" and denied.rule_index == 1


# cookie header -> denied? (a DENY matches each comma-separated element of a list on its own, and a contained text)
COOKIES = {
    "theme=dark; session=admin; lang=en": True,
    "session=admin": True,
    "session=user": False,
    "a=1, b=session=admin2": True,  # the second element contains it
    "": False,
}


def test_header_values_containing_a_text_agree_with_envoy(world):
    port = world["defs"]["web"]["connect"]["sidecar_service"]["port"]
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of("web")
    seen = {}
    for cookie in COOKIES:
        headers = {"Cookie": cookie} if cookie else {}
        request = Request(source_ip="127.0.0.1", method="GET", path="/cookie", host="web", port=inst.port,
                          headers=headers, destination_ip=inst.mesh_address)
        decision = decide(snap.resources, inst.labels, inst.namespace, request)
        seen[cookie] = (_http("127.0.0.1", port, "GET", "/cookie", headers), not decision.allowed)
    assert {k: (s == 403, d) for k, (s, d) in seen.items()} == {k: (v, v) for k, v in COOKIES.items()}, seen
