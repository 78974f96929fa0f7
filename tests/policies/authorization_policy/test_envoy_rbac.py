"""Agreement: the same requests through meshcore's evaluator and through a real Envoy running the compiled RBAC.

Plaintext callers only (PERMISSIVE chain, no principal): methods, paths (with normalization), hosts,
headers, source IPs (the client binds 127.0.0.x source addresses), ports, DENY-before-ALLOW, AUDIT,
an empty ALLOW policy, and TCP with Istio's HTTP-field rule. Identities over mTLS are covered by
``tests/e2e/test_authz.py``. Envoy's per-policy counters must add up to what the evaluator decided.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import textwrap
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.authz import Request, decide

from .._catalog import build, snapshot, write_catalog
from .._envoy import envoy_before_servers

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"
PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def ap(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: default}}\nspec:\n{body}\n---\n"


def policies(web_port: int) -> str:
    return PERMISSIVE + ap("web-allow", f"""
        selector: {{matchLabels: {{app: web}}}}
        rules:
        - to: [{{operation: {{methods: [GET, HEAD], paths: ["/api/*", "*.css", "/"], notPaths: ["/api/secret*"]}}}}]
        - from: [{{source: {{ipBlocks: ["127.0.0.64/26"], notIpBlocks: ["127.0.0.100"]}}}}]
          to: [{{operation: {{methods: [POST]}}}}]
        - to: [{{operation: {{hosts: ["*.example.com", "web"]}}}}]
          when: [{{key: "request.headers[X-Env]", values: ["prod", "stag*"], notValues: ["*-broken"]}}]
        - from: [{{source: {{notPrincipals: ["*"]}}}}]
          to: [{{operation: {{methods: [PUT], ports: ["{web_port}"]}}}}]
        - to: [{{operation: {{methods: [PATCH], ports: ["1"]}}}}]
        """) + ap("web-deny", """
        selector: {matchLabels: {app: web}}
        action: DENY
        rules:
        - to: [{operation: {paths: ["/api/admin/*"]}}]
        - when: [{key: "request.headers[x-block]", values: ["*"]}]
        - from: [{source: {ipBlocks: ["127.0.0.99/32"]}}]
          to: [{operation: {notMethods: [GET]}}]
        """) + ap("web-deny-options", """
        selector: {matchLabels: {app: web}}
        action: DENY
        rules: [{to: [{operation: {methods: [OPTIONS]}}]}]
        """) + ap("web-audit", """
        selector: {matchLabels: {app: web}}
        action: AUDIT
        rules: [{to: [{operation: {methods: [DELETE, PUT]}}]}]
        """) + ap("api-closed", """
        selector: {matchLabels: {app: api}}
        """) + ap("db-allow", """
        selector: {matchLabels: {app: db}}
        rules:
        - from: [{source: {ipBlocks: ["127.0.0.64/26"]}}]
        - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
          to: [{operation: {methods: [GET]}}]
        """) + ap("db-deny", """
        selector: {matchLabels: {app: db}}
        action: DENY
        rules:
        - from: [{source: {ipBlocks: ["127.0.0.70/32"]}}]
          to: [{operation: {paths: ["/x"]}}]
        """)


# (source ip, method, path, headers)
HTTP_CASES = [
    ("127.0.0.1", "GET", "/", {}),
    ("127.0.0.1", "GET", "/api/books", {}),
    ("127.0.0.1", "GET", "/api/books?x=/api/secret", {}),
    ("127.0.0.1", "HEAD", "/static/site.css", {}),
    ("127.0.0.1", "GET", "/static/site.js", {}),
    ("127.0.0.1", "GET", "/api/secret/keys", {}),
    ("127.0.0.1", "GET", "/api//secret/../books", {}),
    ("127.0.0.1", "GET", "/api/public/../secret", {}),
    ("127.0.0.1", "GET", "/%61pi/books", {}),
    ("127.0.0.1", "GET", "/api/%73ecret", {}),
    ("127.0.0.1", "GET", "/api//../books", {}),
    ("127.0.0.1", "GET", "/api/%2e%2e/books", {}),
    ("127.0.0.1", "GET", "/api/admin/users", {}),
    ("127.0.0.1", "GET", "/api/books", {"X-Block": ""}),
    ("127.0.0.1", "POST", "/api/books", {}),
    ("127.0.0.70", "POST", "/api/books", {}),
    ("127.0.0.100", "POST", "/api/books", {}),
    ("127.0.0.99", "POST", "/api/books", {}),
    ("127.0.0.99", "GET", "/api/books", {}),
    ("127.0.0.1", "POST", "/other", {"Host": "shop.example.com", "X-Env": "prod"}),
    ("127.0.0.1", "POST", "/other", {"Host": "Shop.Example.COM:8443", "X-Env": "staging"}),
    ("127.0.0.1", "POST", "/other", {"Host": "web:80", "X-Env": "staging-broken"}),
    ("127.0.0.1", "POST", "/other", {"Host": "web", "X-Env": "dev"}),
    ("127.0.0.1", "POST", "/other", {"Host": "evil.com", "X-Env": "prod"}),
    ("127.0.0.1", "POST", "/other", {"Host": "example.com", "X-Env": "prod"}),
    ("127.0.0.1", "PUT", "/anything", {}),
    ("127.0.0.1", "PATCH", "/anything", {}),
    ("127.0.0.1", "DELETE", "/api/books", {}),
    ("127.0.0.1", "OPTIONS", "/", {}),
]
TCP_CASES = ["127.0.0.1", "127.0.0.65", "127.0.0.70", "127.0.0.127", "127.0.0.128"]


class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = b"app\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}, {"name": "api"}, {"name": "db", "protocol": "tcp"}])
    text = policies(defs["web"]["port"])
    built = build(root, text)
    servers = [ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App),
               ThreadingHTTPServer(("127.0.0.1", defs["api"]["port"]), _App),
               socketserver.ThreadingTCPServer(("127.0.0.1", defs["db"]["port"]), _Echo)]
    with envoy_before_servers(built, defs, servers, tmp_path_factory.mktemp("envoy")) as envoy:
        yield {"defs": defs, "snapshot": snapshot(root, text), "envoy": envoy}


def _http(src: str, port: int, method: str, path: str, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(src, 0))
    try:
        conn.request(method, path, headers={"Host": "web", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _tcp_echoes(src: str, port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(src, 0)) as s:
        s.sendall(b"ping\n")
        try:
            return s.recv(16) == b"ping\n"
        except (ConnectionResetError, socket.timeout):
            return False


def _decide(world, service: str, src: str, method: str = "", path: str = "", headers: dict | None = None):
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of(service)
    headers = {"Host": "web", **(headers or {})}
    request = Request(principal=None, source_ip=src, method=method, path=path, host=headers.pop("Host"),
                      port=inst.port, headers=headers, protocol=inst.protocol)
    return decide(snap.resources, inst.labels, inst.namespace, request)


def test_http_requests_agree(world):
    port = world["defs"]["web"]["connect"]["sidecar_service"]["port"]
    before = world["envoy"].stats()
    disagreements, decided_by, audited = [], Counter(), Counter()
    for src, method, path, headers in HTTP_CASES:
        decision = _decide(world, "web", src, method, path, headers)
        status = _http(src, port, method, path, headers)
        if (status == 403) == decision.allowed or status not in (200, 403):
            disagreements.append((src, method, path, headers, status, decision.reason))
        if not decision.allowed:
            decided_by[decision.policy or "allow"] += 1
            if decision.policy:
                decided_by[f"{decision.policy}[{decision.rule_index}]"] += 1
        audited.update(decision.audit)
    assert disagreements == []
    assert 5 <= sum(1 for s, m, p, h in HTTP_CASES if not _decide(world, "web", s, m, p, h).allowed) < len(HTTP_CASES) - 5

    after = world["envoy"].stats()

    def delta(name: str) -> int:
        full = f"http.inbound_web-v1.rbac.{name}"
        return after.get(full, 0) - before.get(full, 0)

    # Envoy's counters name the same deciding policies and rules as the evaluator: one DENY stage holds
    # every DENY policy (its rules come per route), its per-rule counters say which policy denied
    assert delta("authz.deny.denied") == decided_by["default/web-deny"] + decided_by["default/web-deny-options"]
    assert decided_by["default/web-deny-options"] == 1
    assert delta("authz.allow.denied") == decided_by["allow"]
    for key in [f"default/web-deny[{rule}]" for rule in range(3)] + ["default/web-deny-options[0]"]:
        assert delta(f"authz.deny.policy.{key}.denied") == decided_by[key], key
    # AUDIT (action LOG) lets everything through; its per-rule counter counts the requests it matched
    assert delta("authz.audit.allowed") == len(HTTP_CASES)
    assert delta("authz.audit.policy.default/web-audit[0].allowed") == audited["default/web-audit[0]"] > 0


def test_allow_policy_without_rules_denies_everything(world):
    port = world["defs"]["api"]["connect"]["sidecar_service"]["port"]
    for method, path in (("GET", "/"), ("POST", "/x")):
        assert not _decide(world, "api", "127.0.0.1", method, path).allowed
        assert _http("127.0.0.1", port, method, path, {}) == 403


def test_tcp_connections_agree(world):
    port = world["defs"]["db"]["connect"]["sidecar_service"]["port"]
    results = {}
    before = world["envoy"].stats()
    for src in TCP_CASES:
        decision = _decide(world, "db", src)
        results[src] = (_tcp_echoes(src, port), decision.allowed)
    assert all(echoed == allowed for echoed, allowed in results.values()), results
    # 127.0.0.1's only ALLOW rule used methods (dropped for TCP); .70 is denied by a DENY rule stripped of its path
    assert {src: allowed for src, (_, allowed) in results.items()} == {
        "127.0.0.1": False, "127.0.0.65": True, "127.0.0.70": False, "127.0.0.127": True, "127.0.0.128": False}
    after = world["envoy"].stats()
    prefix = "tcp.inbound_db-v1.authz."
    for name, expected in (("deny.default.db-deny.rbac.denied", 1), ("allow.rbac.denied", 2), ("allow.rbac.allowed", 2)):
        assert after.get(prefix + name, 0) - before.get(prefix + name, 0) == expected, name


def test_stat_readers_count_every_denial_once_from_a_real_envoy(world):
    """The collector (Prometheus text) and the agent (raw names) read the denials Envoy counted for these rules."""
    import json
    import urllib.request

    from meshcore.agent._series import ALLOW_NO_MATCH, policy_denied_family
    from meshcore.observe._proxy_stats import parse_proxy_stats

    admin = world["envoy"].admin

    def scrape() -> tuple[float, dict]:
        with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as resp:
            denied = parse_proxy_stats(resp.read().decode()).denied.get("inbound_web-v1", 0.0)
        with urllib.request.urlopen(f"http://{admin}/stats?format=json", timeout=5) as resp:
            raw = {s["name"]: s["value"] for s in json.load(resp)["stats"] if "value" in s}
        family = policy_denied_family(raw, ["web", "api", "db"])
        return denied, {s.labels["policy"]: s.value for s in family.samples if s.labels["destination_service"] == "web"}

    port = world["defs"]["web"]["connect"]["sidecar_service"]["port"]
    before_total, before = scrape()
    cases = [("127.0.0.1", "GET", "/api/admin/users", {}), ("127.0.0.1", "OPTIONS", "/", {}),
             ("127.0.0.1", "GET", "/static/site.js", {}), ("127.0.0.1", "GET", "/api/books", {})]
    decisions = [_decide(world, "web", *case) for case in cases]
    assert [_http(src, port, m, p, h) for src, m, p, h in cases] == [200 if d.allowed else 403 for d in decisions]
    expected = Counter(d.policy or ALLOW_NO_MATCH for d in decisions if not d.allowed)
    assert expected == {"default/web-deny": 1, "default/web-deny-options": 1, ALLOW_NO_MATCH: 1}
    after_total, after = scrape()
    assert after_total - before_total == 3
    assert {p: after.get(p, 0) - before.get(p, 0) for p in expected} == dict(expected)
