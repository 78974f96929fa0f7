"""RequestAuthentication: validation with exact field paths, scope, and the jwt_authn config it compiles to."""

from __future__ import annotations

import json

import pytest

from meshcore.errors import ValidationError
from meshcore.policies.request_authentication.jwt import jwks_cluster, jwks_cluster_name, jwt_authentication
from meshcore.policies.request_authentication.schema import authentications_for
from meshcore.resources.loader import load_documents

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: RequestAuthentication\n"
JWKS = json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k"}]})


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + text, "ra.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_errors_have_exact_paths():
    errs = _errors(f"""metadata: {{name: ra}}
spec:
  targetRef: {{kind: Gateway, name: x}}
  jwtRules:
  - issuer: a
    jwksUri: ftp://keys
    fromHeaders: [{{name: ":path"}}]
    outputClaimToHeaders: [{{header: x-a, claim: "a b"}}, {{header: "bad header", claim: sub}}]
    timeout: 0s
    spaceDelimitedClaims: [realm.roles, "a b", roles]
  - issuer: b
  - issuer: c
    jwksUri: https://c.example/keys
    jwks: '{JWKS}'
  - issuer: d
    jwks: '{{"keys": [{{"kty": "RSA", "d": "secret"}}]}}'
  - issuer: e
    jwks: 'not json'
""")
    r = "spec.jwtRules"
    assert "Gateway API" in errs["spec.targetRef"]
    assert "http:// or https://" in errs[f"{r}[0].jwksUri"]
    assert "not a valid header name" in errs[f"{r}[0].fromHeaders[0].name"]
    assert "not a claim name" in errs[f"{r}[0].outputClaimToHeaders[0].claim"]
    assert "not a valid header name" in errs[f"{r}[0].outputClaimToHeaders[1].header"]
    assert "at least" in errs[f"{r}[0].timeout"]
    assert "top-level claims only" in errs[f"{r}[0].spaceDelimitedClaims[0]"]
    assert "no whitespace" in errs[f"{r}[0].spaceDelimitedClaims[1]"]
    assert f"{r}[0].spaceDelimitedClaims[2]" not in errs
    assert "OpenID" in errs[f"{r}[1].issuer"]
    assert "not both" in errs[f"{r}[2].jwks"]
    assert "private key" in errs[f"{r}[3].jwks"]
    assert "JSON Web Key Set" in errs[f"{r}[4].jwks"]


def test_one_rule_per_issuer_and_unique_output_headers():
    errs = _errors(f"""metadata: {{name: ra}}
spec:
  jwtRules:
  - {{issuer: a, jwks: '{JWKS}', outputPayloadToHeader: x-p, outputClaimToHeaders: [{{header: X-P, claim: sub}}]}}
""")
    assert "outputPayloadToHeader" in errs["spec.jwtRules[0].outputClaimToHeaders[0].header"]
    errs = _errors(f"""metadata: {{name: ra}}
spec:
  jwtRules:
  - {{issuer: a, jwks: '{JWKS}'}}
  - {{issuer: a, jwks: '{JWKS}'}}
""")
    assert "one rule per issuer" in errs["spec.jwtRules[1].issuer"]


def test_scope_and_compiled_config():
    docs = load_documents(f"""{HEAD}metadata: {{name: mesh, namespace: meshcore-system}}
spec:
  jwtRules: [{{issuer: corp, jwksUri: "https://keys.example.com/jwks"}}]
---
{HEAD}metadata: {{name: web, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: shop, jwks: '{JWKS}', fromParams: [t], forwardOriginalToken: true}}]
---
{HEAD}metadata: {{name: other, namespace: other}}
spec:
  jwtRules: [{{issuer: other, jwks: '{JWKS}'}}]
""", "ra.yaml")
    selected = authentications_for(docs, {"app": "web"}, "shop")
    assert [r.name for r in selected] == ["mesh", "web"]
    config = jwt_authentication(selected)
    assert sorted(config.providers) == ["meshcore-system/mesh[0]", "shop/web[0]"]
    shop = config.providers["shop/web[0]"]
    assert (shop.issuer, list(shop.from_params), shop.forward, shop.payload_in_metadata) == ("shop", ["t"], True, "payload")
    corp = config.providers["meshcore-system/mesh[0]"]
    assert corp.remote_jwks.http_uri.cluster == "jwks|https|keys.example.com|443" == jwks_cluster_name(
        "https://keys.example.com/jwks")
    [rule] = config.rules
    kinds = [r.WhichOneof("requires_type") for r in rule.requires.requires_any.requirements]
    assert kinds == ["provider_name", "provider_name", "allow_missing"]
    assert authentications_for(docs, {"app": "api"}, "shop")[0].name == "mesh"
    cluster = jwks_cluster("https://keys.example.com/jwks")
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    assert jwks_cluster("http://10.0.0.5:8080/k").load_assignment.endpoints[0].lb_endpoints[0].endpoint.address \
        .socket_address.port_value == 8080
