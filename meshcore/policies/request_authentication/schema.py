"""RequestAuthentication: which JSON Web Tokens a workload accepts (spelled and evaluated like Istio's).

```yaml
apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {name: details-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: details}}          # optional (scope as AuthorizationPolicy's)
  jwtRules:
  - issuer: https://issuer.example                 # required: the token's "iss"
    audiences: [details]                           # optional: one of them in "aud"
    jwksUri: https://issuer.example/jwks.json      # or jwks: '{"keys": [...]}' (inline)
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]  # default: Authorization: Bearer, and ?access_token=
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: false                    # default: the token is removed before the workload
    outputPayloadToHeader: x-jwt-payload           # base64url of the verified payload
    outputClaimToHeaders: [{header: x-group, claim: group}]
    timeout: 5s                                    # remote JWKS fetch (default 5s)
    spaceDelimitedClaims: [roles]                  # besides scope and permission (always): "a b" matches "a" and "b"
```

Istio's semantics: a request with a valid token passes, one with an invalid token (bad signature, expired,
wrong issuer or audience) is refused with 401, one **without a token passes** (RequestAuthentication only
says what a token must look like). To require a token, add an AuthorizationPolicy on
``requestPrincipals`` (``["*"]``: any valid token).

An issuer written without ``jwksUri`` or ``jwks`` gets its keys through OpenID Connect discovery, as in Istio: the
control plane reads ``<issuer>/.well-known/openid-configuration`` and the proxies fetch the ``jwks_uri`` named there
(:mod:`.discovery`; the issuer must then be an http(s) URL). ``https`` JWKS servers are verified against the proxy
host's system CA bundle or the mesh config's ``jwks.caCertificates`` (:mod:`.trust`).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Iterable, Mapping

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import ROOT_NAMESPACE, TARGET_REF, Dur, in_scope
from meshcore.resources.model import Resource
from meshcore.resources.schema import Bool, Context, Custom, Deprecated, LabelSelector, ListOf, Obj, Path, Required, Str

from .discovery import discovery_problem
from .spec import parse, spec_of

API_VERSION = "security.mesh.io/v1beta1"
KIND_NAME = "RequestAuthentication"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: header, parameter and cookie names
_CLAIM = re.compile(r"[^\s.][^\s]*")


def _name_problem(what: str):
    def check(value: str) -> str | None:
        if not _TOKEN.fullmatch(value):
            return f"{json.dumps(value)} is not a valid {what} name"
        return None

    return check


def _header_problem(value: str) -> str | None:
    problem = _name_problem("header")(value)
    if problem:
        return problem
    if value.startswith(":") or value.lower() in ("host", "content-length", "transfer-encoding", "connection"):
        return f"{json.dumps(value)} cannot carry a token or a claim (a pseudo or hop-by-hop header)"
    return None


def _uri_problem(value: str) -> str | None:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"must be an http:// or https:// URL with a host, got {json.dumps(value)}"
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{json.dumps(value)} has an invalid port"
    if parsed.username or parsed.password:
        return f"{json.dumps(value)}: credentials in the URL are not supported"
    return None


def _jwks_problem(value: str) -> str | None:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        return f"must be a JSON Web Key Set as a JSON string ('{{\"keys\": [...]}}'): {exc}"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        return "must be a JSON Web Key Set: an object with a non-empty \"keys\" list"
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            return f"keys[{i}] is not a JSON Web Key (an object with \"kty\")"
        if "d" in key:
            return f"keys[{i}] holds a private key (\"d\"): publish only the public part of the key"
    return None


def _claim_problem(value: str) -> str | None:
    if not _CLAIM.fullmatch(value):
        return f"{json.dumps(value)} is not a claim name (no whitespace; nested claims as a.b)"
    return None


def _top_level_claim_problem(value: str) -> str | None:
    if any(c.isspace() for c in value):
        return f"{json.dumps(value)} is not a claim name (no whitespace)"
    if "." in value:
        return (f"{json.dumps(value)}: Envoy splits top-level claims only (a claim named with a '.' would be "
                "looked up as that literal name); name a top-level claim such as \"roles\"")
    return None


def _one_key_source(rule: dict, path: Path, ctx: Context) -> None:
    given = [f for f in ("jwksUri", "jwks") if rule.get(f)]
    if not given:
        problem = discovery_problem(rule["issuer"]) if rule.get("issuer") else None
        if problem:
            ctx.add(path.field("issuer"), problem)
    elif len(given) > 1:
        ctx.add(path.field("jwks"), "give jwksUri or jwks, not both (which keys verify the token would be ambiguous)")


def _unique_output_headers(rule: dict, path: Path, ctx: Context) -> None:
    seen: dict[str, int] = {}
    payload = (rule.get("outputPayloadToHeader") or "").lower()
    for i, out in enumerate(rule.get("outputClaimToHeaders") or ()):
        name = out["header"].lower()
        where = path.field("outputClaimToHeaders").index(i).field("header")
        if name in seen:
            ctx.add(where, f"header {json.dumps(out['header'])} is already written by outputClaimToHeaders[{seen[name]}]")
        elif name == payload:
            ctx.add(where, f"header {json.dumps(out['header'])} is already written by outputPayloadToHeader")
        seen.setdefault(name, i)


def _unique_issuers(spec: dict, path: Path, ctx: Context) -> None:
    seen: dict[str, int] = {}
    for i, rule in enumerate(spec.get("jwtRules") or ()):
        if rule["issuer"] in seen:
            ctx.add(path.field("jwtRules").index(i).field("issuer"),
                    f"issuer {json.dumps(rule['issuer'])} already has a rule at jwtRules[{seen[rule['issuer']]}]; "
                    "one rule per issuer (a token is checked against the rule of its issuer)")
        seen.setdefault(rule["issuer"], i)


JWT_RULE = Obj(
    {
        "issuer": Required(Str(min_len=1)),
        "audiences": ListOf(Str(min_len=1)),
        "jwksUri": Custom(Str(min_len=1), _uri_problem),
        "jwks": Custom(Str(min_len=1), _jwks_problem),
        "fromHeaders": ListOf(Obj({"name": Required(Custom(Str(min_len=1), _header_problem)), "prefix": Str()}),
                              min_items=1),
        "fromParams": ListOf(Custom(Str(min_len=1), _name_problem("query parameter")), min_items=1),
        "fromCookies": ListOf(Custom(Str(min_len=1), _name_problem("cookie")), min_items=1),
        "forwardOriginalToken": Bool(),
        "outputPayloadToHeader": Custom(Str(min_len=1), _header_problem),
        "outputClaimToHeaders": ListOf(Obj({
            "header": Required(Custom(Str(min_len=1), _header_problem)),
            "claim": Required(Custom(Str(min_len=1), _claim_problem)),
        })),
        "timeout": Dur(min_s=0.001),
        "spaceDelimitedClaims": ListOf(Custom(Str(min_len=1), _top_level_claim_problem), max_items=64, unique=True),
    },
    rules=[_one_key_source, _unique_output_headers],
    deprecated={"jwks_uri": Deprecated("jwksUri", why="the deprecated spelling of jwksUri")},
)

SPEC = Obj(
    {
        "selector": LabelSelector(),
        "jwtRules": ListOf(JWT_RULE),
    },
    rules=[_unique_issuers],
    refused={"targetRef": TARGET_REF, "targetRefs": TARGET_REF},
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    parse=parse,
    summary="which JWTs (issuers, keys, audiences, token locations) workloads accept; an invalid token is a 401",
)


# --- scope (pure) --------------------------------------------------------------------------------------


def selects(resource: Resource, labels: Mapping[str, str], namespace: str) -> bool:
    """Whether ``resource`` applies to a workload with ``labels`` in ``namespace`` (AuthorizationPolicy's scope)."""
    return resource.kind == KIND_NAME and in_scope(spec_of(resource).match_labels, resource.namespace, labels, namespace)


def authentications_for(resources: Iterable[Resource], labels: Mapping[str, str], namespace: str) -> list[Resource]:
    """The RequestAuthentications that apply to a workload, ordered by (namespace, name). As in Istio, the JWT
    rules of all of them count: a token passes when it is valid for the rule of its issuer."""
    return sorted((r for r in resources if selects(r, labels, namespace)), key=lambda r: (r.namespace, r.name))


__all__ = ["API_VERSION", "KIND", "KIND_NAME", "ROOT_NAMESPACE", "authentications_for", "selects"]
