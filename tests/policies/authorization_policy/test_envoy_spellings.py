"""Policy bypass by spelling (issue 12, findings 7 and 18), through a real Envoy running the generated inbound config.

A DENY on path ``/admin`` (and ``/admin/*``), on host ``secret.details`` and on header ``x-env: prod`` must hold
against every spelling of the same request: path parameters (``;``, ``%3B``), escaped slashes, dot segments,
repeated slashes, escaped letters, a trailing dot and upper case in the host, a header sent as a list or twice.
Istio is case-sensitive on paths and keeps ``/admin.`` a different path: those pass (documented in
docs/security.md, "Paths, hosts and headers as Envoy sees them"). Every request is also decided by meshcore's
evaluator with the same mesh settings; both must agree (denied = 403 from RBAC or 400 before it).
"""

from __future__ import annotations

import http.client
import textwrap
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest

from meshcore.authz import MeshContext, Request, decide
from meshcore.compose import build_proxy
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo

from .._catalog import snapshot, write_catalog
from .._envoy import envoy_before_servers
from .test_envoy_rbac import PERMISSIVE, _App

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"


def ap(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: default}}\nspec:\n{body}\n---\n"


POLICIES = PERMISSIVE + ap("web-deny", """
    selector: {matchLabels: {app: web}}
    action: DENY
    rules:
    - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
    - to: [{operation: {hosts: ["secret.details"]}}]
    - when: [{key: "request.headers[x-env]", values: ["prod"]}]
    """) + ap("api-allow", """
    selector: {matchLabels: {app: api}}
    rules:
    - when: [{key: "request.headers[x-env]", values: ["prod"]}]
    """)


@contextmanager
def _world(tmp_path_factory, settings: MeshSettings):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}, {"name": "api"}])
    base = snapshot(root, POLICIES)
    snap = MeshSnapshot.build(base.catalog, base.resources, base.trust_domain, settings)
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    servers = [ThreadingHTTPServer(("127.0.0.1", defs[n]["port"]), _App) for n in ("web", "api")]
    with envoy_before_servers(built, defs, servers, tmp_path_factory.mktemp("envoy")):
        yield {"defs": defs, "snapshot": snap}


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    with _world(tmp_path_factory, MeshSettings()) as w:
        yield w


@pytest.fixture(scope="module")
def decoding_world(tmp_path_factory):
    settings = MeshSettings(path_normalization="DECODE_AND_MERGE_SLASHES", allow_path_parameters=True)
    with _world(tmp_path_factory, settings) as w:
        yield w


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory):
    with _world(tmp_path_factory, MeshSettings(path_normalization="NONE")) as w:
        yield w


def _send(world, service: str, path: str, headers: list[tuple[str, str]]) -> int:
    """One request with ``headers`` sent exactly as given (a name twice is two header lines)."""
    port = world["defs"][service]["connect"]["sidecar_service"]["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        if not any(k.lower() == "host" for k, _ in headers):
            conn.putheader("Host", service)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _decide(world, service: str, path: str, headers: list[tuple[str, str]]):
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of(service)
    host = next((v for k, v in headers if k.lower() == "host"), service)
    merged: dict[str, str] = {}
    for k, v in headers:  # as Envoy joins repeated headers
        if k.lower() != "host":
            merged[k.lower()] = f"{merged[k.lower()]},{v}" if k.lower() in merged else v
    request = Request(principal=None, source_ip="127.0.0.1", method="GET", path=path, host=host, port=inst.port,
                      headers=merged, protocol=inst.protocol)
    return decide(snap.resources, inst.labels, inst.namespace, request, context=MeshContext.of(snap))


# (path, headers, expected status) for the web workload under the default settings (MERGE_SLASHES, no ;params)
DEFAULT_CASES = [
    ("/admin", [], 403),
    ("/admin/users", [], 403),
    ("/public", [], 200),
    ("/admin;x", [], 400),             # path parameter: rejected before the app (Envoy does not strip them)
    ("/admin%3bx", [], 400),           # ... percent-encoded, either case
    ("/admin%3Bx", [], 400),
    ("/public;jsessionid=1", [], 400),  # any path parameter, not only on denied paths
    ("/public?a=1;b=2", [], 200),      # a ';' in the query is no path parameter
    ("//admin", [], 403),              # MERGE_SLASHES
    ("/public/../admin", [], 403),     # dot segments (BASE)
    ("/public/%2e%2e/admin", [], 403),
    ("/%61dmin", [], 403),             # escaped unreserved characters decoded (BASE)
    ("/admin%2Fusers", [], 400),       # escaped slash: rejected under BASE and MERGE_SLASHES
    ("/admin%5cusers", [], 400),       # escaped backslash, too
    ("/admin\\users", [], 403),        # a backslash is a slash (BASE)
    ("/ADMIN", [], 200),               # paths are case-sensitive, as in Istio (docs: list variants or prefixes)
    ("/admin.", [], 200),              # a different segment for Envoy and Istio (docs: deny /admin* instead)
    ("/x", [("Host", "secret.details")], 403),
    ("/x", [("Host", "secret.details.")], 403),   # trailing dot stripped (strip_trailing_host_dot)
    ("/x", [("Host", "SECRET.details")], 403),    # hosts match case-insensitively
    ("/x", [("Host", "Secret.Details.:9080")], 403),
    ("/x", [("Host", "secret.details.evil")], 200),
    ("/x", [("x-env", "prod")], 403),
    ("/x", [("x-env", "prod,dev")], 403),         # one header as a list: any element matches a DENY
    ("/x", [("x-env", "dev, prod")], 403),
    ("/x", [("x-env", "dev"), ("x-env", "prod")], 403),  # two header lines (Envoy joins them with ',')
    ("/x", [("x-env", "dev")], 200),
    ("/x", [("x-env", "production")], 200),
]


@pytest.mark.parametrize("path,headers,expected", DEFAULT_CASES,
                         ids=[f"{p}{'+' + ','.join(f'{k}={v}' for k, v in h) if h else ''}" for p, h, _ in DEFAULT_CASES])
def test_deny_holds_against_every_spelling(default_world, path, headers, expected):
    status = _send(default_world, "web", path, headers)
    decision = _decide(default_world, "web", path, headers)
    assert status == expected, f"Envoy answered {status}; the evaluator says: {decision.reason}"
    assert decision.allowed == (status == 200), f"evaluator: {decision.reason}; Envoy: {status}"


ALLOW_CASES = [
    ([("x-env", "prod")], 200),
    ([("x-env", "prod,dev")], 403),                   # an ALLOW matches the whole value: a list is no way in
    ([("x-env", "dev")], 403),
    ([], 403),
]


@pytest.mark.parametrize("headers,expected", ALLOW_CASES)
def test_allow_on_a_header_is_not_opened_by_a_list(default_world, headers, expected):
    assert _send(default_world, "api", "/x", headers) == expected
    assert _decide(default_world, "api", "/x", headers).allowed == (expected == 200)


def test_envoy_matches_each_header_line_on_its_own(default_world):
    """Two ``x-env`` lines, ``dev`` and ``prod``: Envoy's header matcher takes either line, so the ALLOW on ``prod``
    lets it in (as ``prod`` alone would: nothing gained) and the DENY on ``prod`` denies it (above)."""
    assert _send(default_world, "api", "/x", [("x-env", "dev"), ("x-env", "prod")]) == 200


DECODING_CASES = [
    ("/admin%2Fusers", 403),   # DECODE_AND_MERGE_SLASHES: decoded, then denied
    ("/admin%5Cusers", 403),
    ("/public%2Fx", 200),
    ("/admin;x", 200),         # path parameters allowed: /admin;x is not /admin to Envoy (docs say so)
    ("/admin", 403),
]


@pytest.mark.parametrize("path,expected", DECODING_CASES)
def test_decode_and_merge_slashes_and_allowed_path_parameters(decoding_world, path, expected):
    assert _send(decoding_world, "web", path, []) == expected
    assert _decide(decoding_world, "web", path, []).allowed == (expected == 200)


@pytest.mark.parametrize("path,expected", [("/admin", 403), ("//admin", 200), ("/x/../admin", 200)])
def test_none_normalizes_nothing(raw_world, path, expected):
    assert _send(raw_world, "web", path, []) == expected
    assert _decide(raw_world, "web", path, []).allowed == (expected == 200)
