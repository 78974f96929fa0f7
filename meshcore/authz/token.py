"""A JWT as a workload's proxy would take it (pure but for the clock, handed in): ``meshctl authz check --jwt``.

The token arrives as ``Authorization: Bearer <token>``. What the destination's ``jwt_authn`` filter (the
RequestAuthentications selecting it, :mod:`meshcore.policies.request_authentication.jwt`) does with it:

* no RequestAuthentication selects the workload: there is no filter, the token is ignored (no ``request.auth.*``);
* no rule reads ``Authorization: Bearer`` (every rule names other locations): the token is not seen, the request
  counts as one without a token;
* not a JWT, an issuer no rule names, expired or not yet valid (Envoy's 60 s clock skew), a bad signature: 401;
  a valid token for none of the rule's ``audiences``: 403. The request ends there, before any AuthorizationPolicy;
* else its payload, space-delimited claims split as the proxy splits them, is what the policies read.

Signatures are checked where the keys are at hand without fetching anything: a rule's inline ``jwks``, or the key set
given with ``--jwks FILE``; keys the proxies fetch (``jwksUri``, or found by OIDC discovery) are not, and the answer
says so (``signature``: ``verified``, ``not checked``, or ``failed``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from ..policies.request_authentication.discovery import UNAVAILABLE_KID
from ..policies.request_authentication.payload import normalized_payload
from ..policies.request_authentication.spec import JwtRule, spec_of
from ..resources.model import Resource

CLOCK_SKEW_S = 60  # Envoy's jwt_authn default (clock_skew_seconds)
VERIFIED, NOT_CHECKED, FAILED = "verified", "not checked", "failed"


@dataclass(frozen=True)
class TokenOutcome:
    """What the proxy does with the token: ``status`` 0 (it passes: ``payload`` is what the policies read, None for
    a token not seen or ignored), 401 or 403 (refused before any AuthorizationPolicy)."""

    status: int
    reason: str
    issuer: str | None = None
    subject: str | None = None
    rule: str | None = None  # ns/name[i] of the RequestAuthentication rule for its issuer
    signature: str = NOT_CHECKED
    signature_detail: str = ""
    payload: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("payload")
        return out


def _reads_bearer(rule: JwtRule) -> bool:
    if not (rule.from_headers or rule.from_params or rule.from_cookies):
        return True  # Istio's default locations: Authorization: Bearer, ?access_token=
    return any(h.name.lower() == "authorization" and h.prefix.strip().lower() == "bearer" for h in rule.from_headers)


def _verify(token: str, keys: str, algorithm: str) -> str | None:
    """None when ``keys`` (a JWKS document) verify the token's signature; else why not."""
    import jwt as pyjwt  # lazy: PyJWT pulls in urllib.request (its JWKS client), pure modules must not

    try:
        key_set = pyjwt.PyJWKSet.from_json(keys)
    except (pyjwt.PyJWTError, ValueError) as exc:
        return f"the key set is unusable: {exc}"
    kid = pyjwt.get_unverified_header(token).get("kid")
    candidates = [k for k in key_set.keys if kid is None or k.key_id in (None, kid)]
    if not candidates:
        return f"no key with kid {kid!r} in the key set"
    last = ""
    for key in candidates:
        try:
            pyjwt.decode(token, key=key, algorithms=[algorithm], options={
                "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False, "verify_iss": False})
            return None
        except pyjwt.PyJWTError as exc:
            last = str(exc)
    return last


def check_token(token: str, selected: Sequence[Resource], now: float, jwks: str | None = None,
                settings=None) -> TokenOutcome:
    """The outcome of ``token`` at a workload the RequestAuthentications ``selected`` apply to, at time ``now``;
    ``jwks``: a key set to check the signature with when the rule's keys are remote."""
    from ..policies.request_authentication.jwt import key_source, provider_name  # generation: loaded when used
    import jwt as pyjwt  # lazy, as in _verify

    rules = [(r, i, rule) for r in selected for i, rule in enumerate(spec_of(r).jwt_rules)]
    if not rules:
        return TokenOutcome(0, "no RequestAuthentication selects the workload: the token is ignored (no request.auth.*)")
    if not any(_reads_bearer(rule) for _r, _i, rule in rules):
        return TokenOutcome(0, "no JWT rule reads Authorization: Bearer (they name other locations): the request "
                               "counts as one without a token")
    try:
        header = pyjwt.get_unverified_header(token)
        payload = pyjwt.decode(token, options={"verify_signature": False})
    except pyjwt.PyJWTError as exc:
        return TokenOutcome(401, f"401: not a JWT ({exc})")
    issuer, subject = payload.get("iss"), payload.get("sub")
    found = [(r, i, rule) for r, i, rule in rules if rule.issuer == issuer and _reads_bearer(rule)]
    base: dict[str, Any] = {"issuer": issuer if isinstance(issuer, str) else None, "subject": subject if isinstance(subject, str) else None}
    if not found:
        return TokenOutcome(401, f"401: issuer {issuer!r} has no JWT rule reading Authorization: Bearer here "
                                 f"(known: {', '.join(sorted({rule.issuer for _r, _i, rule in rules}))})", **base)
    resource, index, rule = found[0]
    base["rule"] = provider_name(resource, index)
    for claim, late in (("exp", True), ("nbf", False)):
        value = payload.get(claim)
        if value is None:
            continue
        if not isinstance(value, (int, float)):
            return TokenOutcome(401, f"401: {claim} is not a number", **base)
        if late and now > value + CLOCK_SKEW_S:
            return TokenOutcome(401, f"401: the token expired {int(now - value)} s ago", **base)
        if not late and now + CLOCK_SKEW_S < value:
            return TokenOutcome(401, f"401: the token is not valid for another {int(value - now)} s (nbf)", **base)
    jwks_uri, inline = key_source(rule, settings)
    if inline is not None and UNAVAILABLE_KID in inline:
        return TokenOutcome(401, f"401: the keys of {rule.issuer} are not known yet (OpenID Connect discovery pending "
                                 "or failing: meshctl status, meshctl analyze)", signature=FAILED, **base)
    keys, where = (inline, f"the inline jwks of {base['rule']}") if inline is not None else (jwks, "--jwks")
    if keys is None:
        signature, detail = NOT_CHECKED, f"the proxies fetch this issuer's keys from {jwks_uri}; pass --jwks FILE to check it"
    else:
        problem = _verify(token, keys, str(header.get("alg") or ""))
        if problem is not None:
            return TokenOutcome(401, f"401: the signature does not verify with {where}: {problem}", signature=FAILED,
                                signature_detail=f"checked with {where}", **base)
        signature, detail = VERIFIED, f"with {where}"
    if rule.audiences:
        aud = payload.get("aud")
        auds = [aud] if isinstance(aud, str) else [a for a in aud or () if isinstance(a, str)]
        if not set(auds) & set(rule.audiences):
            return TokenOutcome(403, f"403: audiences {auds or 'none'} are none of {list(rule.audiences)}",
                                signature=signature, signature_detail=detail, **base)
    return TokenOutcome(0, "valid", signature=signature, signature_detail=detail,
                        payload=normalized_payload(payload, rule.split_claims), **base)


def read_jwks(text: str) -> str:
    """A key set given on the command line, as JSON text (``{"keys": [...]}``, or one key)."""
    doc = json.loads(text)
    if isinstance(doc, dict) and "keys" not in doc and "kty" in doc:
        doc = {"keys": [doc]}
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JSON Web Key Set ({"keys": [...]})')
    return json.dumps(doc)


__all__ = ["CLOCK_SKEW_S", "FAILED", "NOT_CHECKED", "TokenOutcome", "VERIFIED", "check_token", "read_jwks"]
