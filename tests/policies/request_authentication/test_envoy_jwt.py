"""RequestAuthentication and AuthorizationPolicy's JWT conditions in a real Envoy, and the evaluator agreeing.

One Envoy on the built inbound listeners (plaintext chain, :mod:`tests.policies._envoy`); tokens signed here with
a test RSA key (PyJWT). One issuer's keys are inline, the other's are fetched from a JWKS server on loopback
through the ``jwks|...`` cluster the plugin adds. Checked: a valid token passes, an expired, wrongly signed,
wrong-audience or unknown-issuer token is a 401, a request without a token passes RequestAuthentication (Istio's
semantics) and is then decided by AuthorizationPolicy (``requestPrincipals``, ``request.auth.claims[...]``,
``request.auth.audiences``, ``request.auth.presenter``), the token is removed before the app unless
``forwardOriginalToken``, claims reach the app as headers (``outputClaimToHeaders``).
"""

from __future__ import annotations

import http.client
import json
import textwrap
import threading
import time
from http.server import ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.authz import Request, decide
from meshcore.policies.request_authentication.payload import normalized_payload, split_claims_for

from .._catalog import build, free_port, snapshot, write_catalog
from .._envoy import HeadersApp, StaticEnvoy, wait_listening

ISSUER = "https://issuer.test"
REMOTE = "https://remote.test/tenant"

PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def _doc(kind: str, name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: security.mesh.io/v1beta1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec:\n{body}\n---\n")


def _jwks(key) -> str:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]})


def policies(jwks: str, jwks_port: int) -> str:
    return PERMISSIVE + _doc("RequestAuthentication", "web-jwt", f"""
        selector: {{matchLabels: {{app: web}}}}
        jwtRules:
        - issuer: {ISSUER}
          audiences: [web]
          jwks: {json.dumps(jwks)}
          outputClaimToHeaders: [{{header: x-group, claim: group}}]
          spaceDelimitedClaims: [roles]
        - issuer: {REMOTE}
          jwksUri: http://127.0.0.1:{jwks_port}/jwks.json
          fromHeaders: [{{name: x-token}}]
          forwardOriginalToken: true
        """) + _doc("AuthorizationPolicy", "web-allow", """
        selector: {matchLabels: {app: web}}
        rules:
        - to: [{operation: {paths: ["/public*"]}}]
        - from: [{source: {requestPrincipals: ["https://issuer.test/alice", "https://remote.test/*"]}}]
          to: [{operation: {paths: ["/private"]}}]
        - to: [{operation: {paths: ["/admin"]}}]
          when:
          - {key: "request.auth.claims[realm][roles]", values: [admin]}
          - {key: request.auth.audiences, values: [web]}
        - to: [{operation: {paths: ["/cli"]}}]
          when: [{key: request.auth.presenter, values: ["cli-*"]}]
        - to: [{operation: {paths: ["/scoped"]}}]
          when: [{key: "request.auth.claims[scope]", values: ["orders.write"]}]
        - to: [{operation: {paths: ["/roles"]}}]
          when: [{key: "request.auth.claims[roles]", values: ["edit*"]}, {key: "request.auth.claims[group]", values: [eng]}]
        """) + _doc("AuthorizationPolicy", "web-deny", """
        selector: {matchLabels: {app: web}}
        action: DENY
        rules:
        - when: [{key: "request.auth.claims[group]", values: [blocked]}]
        - from: [{source: {notRequestPrincipals: ["*"]}}]
          to: [{operation: {paths: ["/public/members"]}}]
        """)


def _jwks_server(jwks: str) -> ThreadingHTTPServer:
    class Jwks(HeadersApp):
        def do_GET(self) -> None:  # noqa: N802
            body = jwks.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return ThreadingHTTPServer(("127.0.0.1", free_port()), Jwks)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    key, other_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwks = _jwks(key)
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}])
    jwks_server = _jwks_server(jwks)
    text = policies(jwks, jwks_server.server_address[1])
    built = build(root, text)
    app = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), HeadersApp)
    for s in (app, jwks_server):
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        with StaticEnvoy(built, tmp_path_factory.mktemp("envoy")) as envoy:
            port = defs["web"]["connect"]["sidecar_service"]["port"]
            wait_listening("127.0.0.1", port)
            yield {"port": port, "key": key, "other_key": other_key, "snapshot": snapshot(root, text),
                   "built": built, "envoy": envoy}
    finally:
        for s in (app, jwks_server):
            s.shutdown()
            s.server_close()


def _token(key, iss: str = ISSUER, sub: str = "alice", aud="web", ttl: float = 300, **claims) -> str:
    now = int(time.time())
    payload = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def _get(world, path: str, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "web", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.status == 200 else {})
    finally:
        conn.close()


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _decide(world, path: str, payload: dict | None) -> bool:
    snap = world["snapshot"]
    [inst] = snap.catalog.instances_of("web")
    if payload is not None:  # as jwt_authn puts it into metadata: space-delimited claims split
        payload = normalized_payload(payload, split_claims_for(snap.resources, inst.labels, inst.namespace,
                                                               payload.get("iss")))
    request = Request(principal=None, source_ip="127.0.0.1", method="GET", path=path, host="web", port=inst.port,
                      jwt=payload)
    return decide(snap.resources, inst.labels, inst.namespace, request).allowed


def test_jwt_filter_sits_before_the_policy_filters(world):
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    [listener] = [l for l in world["built"]["type.googleapis.com/envoy.config.listener.v3.Listener"]
                  if l.name.startswith("inbound:")]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    assert names.index("envoy.filters.http.jwt_authn") < names.index("meshcore.authz.audit")
    clusters = [c.name for c in world["built"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]]
    assert any(name.startswith("jwks|http|127.0.0.1|") for name in clusters)


def test_invalid_tokens_are_401(world):
    key, other = world["key"], world["other_key"]
    assert _get(world, "/public", _bearer(_token(key)))[0] == 200
    assert _get(world, "/public", _bearer(_token(key, ttl=-120)))[0] == 401  # expired (beyond Envoy's 60 s skew)
    assert _get(world, "/public", _bearer(_token(other)))[0] == 401  # signed by a key not in the JWKS
    # A token for another audience: Envoy's jwt_authn answers 403 (it is valid, just not for this workload).
    assert _get(world, "/public", _bearer(_token(key, aud="other")))[0] == 403
    assert _get(world, "/public", _bearer(_token(key, iss="https://unknown.test")))[0] == 401
    assert _get(world, "/public", _bearer("not-a-jwt"))[0] == 401


def test_no_token_passes_request_authentication(world):
    assert _get(world, "/public")[0] == 200
    assert _get(world, "/private")[0] == 403  # AuthorizationPolicy requires a request principal there
    assert _get(world, "/public/members")[0] == 403  # DENY notRequestPrincipals ["*"]
    assert _get(world, "/public/members", _bearer(_token(world["key"])))[0] == 200


def test_token_removed_and_claims_to_headers(world):
    status, seen = _get(world, "/public", _bearer(_token(world["key"], group="eng")))
    assert status == 200
    assert seen.get("x-group") == "eng" and "authorization" not in seen and "x-token" not in seen


def test_remote_jwks_and_forwarded_token(world):
    token = _token(world["key"], iss=REMOTE, sub="svc", aud="anything")
    deadline = time.monotonic() + 20  # the first request fetches the JWKS through the jwks cluster
    while True:
        status, seen = _get(world, "/private", {"x-token": token})
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200
    assert seen["x-token"] == token  # forwardOriginalToken
    assert _get(world, "/private", {"x-token": _token(world["other_key"], iss=REMOTE)})[0] == 401


# (path, claims beyond iss/sub/aud, issuer, subject)
CASES = [
    ("/private", {}, ISSUER, "alice"),
    ("/private", {}, ISSUER, "bob"),
    ("/private", {}, ISSUER, "alice/x"),
    ("/admin", {"realm": {"roles": ["viewer", "admin"]}}, ISSUER, "bob"),
    ("/admin", {"realm": {"roles": "admin"}}, ISSUER, "bob"),
    ("/admin", {"realm": {"roles": ["viewer"]}}, ISSUER, "bob"),
    ("/admin", {"roles": ["admin"]}, ISSUER, "bob"),
    ("/cli", {"azp": "cli-tool"}, ISSUER, "bob"),
    ("/cli", {"azp": "web-ui"}, ISSUER, "bob"),
    ("/public", {"group": "blocked"}, ISSUER, "alice"),
    ("/public", {"group": ["eng", "blocked"]}, ISSUER, "alice"),
    ("/public", {"group": "eng"}, ISSUER, "alice"),
    # scope (always) and roles (spaceDelimitedClaims) match per space-delimited word; group (not listed) whole.
    ("/scoped", {"scope": "orders.read orders.write"}, ISSUER, "bob"),
    ("/scoped", {"scope": "orders.read"}, ISSUER, "bob"),
    ("/scoped", {"scope": "orders.write-all"}, ISSUER, "bob"),
    ("/roles", {"roles": "viewer editor", "group": "eng"}, ISSUER, "bob"),
    ("/roles", {"roles": "editor", "group": "eng ops"}, ISSUER, "bob"),
    ("/roles", {"roles": ["viewer", "editor"], "group": "eng"}, ISSUER, "bob"),
]


def test_claims_decide_as_the_evaluator_does(world):
    disagreements = []
    for path, claims, iss, sub in CASES:
        token = _token(world["key"], iss=iss, sub=sub, **claims)
        status, _ = _get(world, path, _bearer(token))
        payload = jwt.decode(token, options={"verify_signature": False})
        allowed = _decide(world, path, payload)
        if status not in (200, 403) or (status == 200) != allowed:
            disagreements.append((path, claims, sub, status, allowed))
    assert not disagreements
    statuses = [_get(world, p, _bearer(_token(world["key"], iss=i, sub=s, **c)))[0] for p, c, i, s in CASES]
    assert statuses == [200, 403, 403, 200, 200, 403, 403, 200, 403, 403, 403, 200, 200, 403, 403, 200, 403, 200]


def test_evaluator_without_token(world):
    assert _decide(world, "/public", None)
    assert not _decide(world, "/private", None)
    assert not _decide(world, "/public/members", None)
