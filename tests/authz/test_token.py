"""check() with a JWT (`meshctl authz check --jwt`): the token taken as details' proxy would take it, on the bookinfo
catalog: refused with 401/403 before any policy, ignored where no RequestAuthentication applies, or its principal
and claims (space-delimited ones split) deciding; the signature checked with inline keys or --jwks, and said so."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.authz import CheckQuery, check
from meshcore.catalog.files import FileCatalogSource
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSnapshot
from tests.authz.test_check import CATALOG

KEY, OTHER = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
NOW = 1_900_000_000


def _jwks(key) -> str:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]})


def _snapshot(extra: str = "") -> MeshSnapshot:
    text = f"""apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {{name: details-jwt}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  jwtRules:
  - {{issuer: https://inline.example, audiences: [details], jwks: {json.dumps(_jwks(KEY))}, spaceDelimitedClaims: [roles]}}
  - {{issuer: https://remote.example, jwksUri: "https://keys.remote.example/jwks"}}
  - {{issuer: https://discovered.example}}
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: details-allow}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["https://inline.example/alice", "https://remote.example/*"]}}}}]
  - when: [{{key: "request.auth.claims[scope]", values: [details.read]}}, {{key: "request.auth.claims[roles]", values: [reader]}}]
{extra}"""
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    return MeshSnapshot.build(catalog, load_documents(text, "p.yaml"))


def _token(iss="https://inline.example", sub="alice", key=KEY, ttl=300, **claims) -> str:
    payload = {"iss": iss, "sub": sub, "aud": "details", "iat": NOW, "exp": NOW + ttl, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def _check(token: str, to="details", jwks: str | None = None, snap=None) -> dict:
    out = check(snap or _snapshot(), CheckQuery(destination=to, source="productpage", path="/details/0", token=token,
                                                jwks=jwks, now=NOW))
    [result] = out["results"]
    return result


def test_a_valid_token_decides_by_its_principal_and_claims():
    r = _check(_token())
    assert r["allowed"] and r["token"]["status"] == 0 and r["token"]["signature"] == "verified"
    assert r["token"]["rule"] == "default/details-jwt[0]" and "inline jwks" in r["token"]["signature_detail"]
    r = _check(_token(sub="bob"))
    assert not r["allowed"] and r["action"] == "ALLOW"  # valid, but no rule allows bob
    assert _check(_token(sub="bob", scope="details.read orders.write", roles="writer reader"))["allowed"]
    assert not _check(_token(sub="bob", scope="details.read", roles="writer"))["allowed"]


@pytest.mark.parametrize("token,status,words", [
    (_token(key=OTHER), 401, "signature does not verify"),
    (_token(ttl=-120), 401, "expired"),
    (_token(aud="other"), 403, "audiences"),
    (_token(iss="https://unknown.example"), 401, "no JWT rule"),
    (_token(iss="https://discovered.example"), 401, "not known yet"),
    ("not.a.jwt", 401, "not a JWT"),
])
def test_refused_before_any_policy(token, status, words):
    r = _check(token)
    assert (r["allowed"], r["action"], r["token"]["status"]) == (False, "RequestAuthentication", status)
    assert words in r["reason"]


def test_expiry_has_envoys_clock_skew():
    assert _check(_token(ttl=-30))["token"]["status"] == 0  # 30 s late: within Envoy's 60 s


def test_remote_keys_are_checked_only_with_jwks():
    token = _token(iss="https://remote.example", sub="svc")
    r = _check(token)
    assert r["allowed"] and r["token"]["signature"] == "not checked" and "--jwks" in r["token"]["signature_detail"]
    assert _check(token, jwks=_jwks(KEY))["token"]["signature"] == "verified"
    r = _check(token, jwks=_jwks(OTHER))
    assert not r["allowed"] and r["token"]["signature"] == "failed"


def test_no_request_authentication_ignores_the_token():
    r = _check(_token(key=OTHER), to="ratings")  # nothing selects ratings: no jwt_authn, the token is not read
    assert r["allowed"] and r["token"]["status"] == 0 and "ignored" in r["token"]["reason"]


def test_a_rule_reading_another_header_does_not_see_bearer():
    snap = _snapshot().resources
    text = """apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {name: ratings-jwt}
spec:
  selector: {matchLabels: {app: ratings}}
  jwtRules: [{issuer: https://inline.example, jwksUri: "https://k.example/j", fromHeaders: [{name: x-jwt}]}]
"""
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    snapshot = MeshSnapshot.build(catalog, [*snap, *load_documents(text, "r.yaml")])
    r = _check(_token(), to="ratings", snap=snapshot)
    assert r["allowed"] and "counts as one without a token" in r["token"]["reason"]


def test_time_defaults_to_now():
    now = int(time.time())
    token = jwt.encode({"iss": "https://inline.example", "sub": "alice", "aud": "details", "exp": now + 60}, KEY,
                       algorithm="RS256", headers={"kid": "k1"})
    out = check(_snapshot(), CheckQuery(destination="details", source="productpage", token=token))
    assert out["allowed"]
