"""OpenID Connect discovery, the pure half: what an issuer's ``/.well-known/openid-configuration`` says, and the key
set a provider gets while its issuer's keys are unknown.

An issuer written without ``jwksUri`` or ``jwks`` gets its keys as in Istio: the control plane reads
``<issuer>/.well-known/openid-configuration`` (:mod:`meshcore.controlplane.oidc_discovery`, the IO half) and the
provider fetches the ``jwks_uri`` named there like a written ``jwksUri`` (Envoy's remote JWKS, through a
``jwks|...`` cluster). Until the first read succeeds, and whenever it fails with nothing found before, the provider
holds :data:`UNAVAILABLE_JWKS`: a token of that issuer is refused (401), a request without a token passes as
RequestAuthentication says; Istio does the same while it cannot fetch an issuer's keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from typing import Any

WELL_KNOWN = "/.well-known/openid-configuration"

# NIST P-256 (SEC 2: secp256r1): y^2 = x^3 - 3x + b over GF(p), p = 3 (mod 4).
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _point_nobody_holds_the_key_of(seed: bytes) -> tuple[int, int]:
    """A P-256 point derived from a public seed (try-and-increment on x): its discrete logarithm, the private key a
    token would be signed with, is known to no one, so no token verifies against it."""
    x = int.from_bytes(hashlib.sha256(seed).digest(), "big") % _P
    while True:
        rhs = (pow(x, 3, _P) - 3 * x + _B) % _P
        y = pow(rhs, (_P + 1) // 4, _P)
        if y * y % _P == rhs:
            return x, y
        x = (x + 1) % _P


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


_X, _Y = _point_nobody_holds_the_key_of(b"meshcore: the keys of this issuer are not known yet")
UNAVAILABLE_KID = "meshcore-oidc-discovery-pending"
UNAVAILABLE_JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                                         "kid": UNAVAILABLE_KID, "x": _b64(_X), "y": _b64(_Y)}]},
                              separators=(",", ":"))
"""The key set of a provider whose issuer's keys are not known (discovery pending or failed): verifies no token."""


def discovery_url(issuer: str) -> str:
    """``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0, section 4)."""
    return issuer.rstrip("/") + WELL_KNOWN


def discovery_problem(issuer: str) -> str | None:
    """Why ``issuer`` cannot be discovered (it must be an https URL, or http for a test issuer), or None."""
    parsed = urllib.parse.urlsplit(issuer)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return (f"issuer {issuer!r} has no jwksUri or jwks, and its keys can only be discovered when it is an "
                "https:// URL (OpenID Connect discovery reads <issuer>/.well-known/openid-configuration): write "
                "jwksUri or jwks")
    if parsed.query or parsed.fragment:
        return f"issuer {issuer!r}: an OpenID issuer URL has no query or fragment"
    return None


def jwks_uri_of(issuer: str, document: Any) -> str:
    """The ``jwks_uri`` of an openid-configuration document; :class:`ValueError` saying what is wrong otherwise
    (not an object, another ``issuer``, no or a non-http(s) ``jwks_uri``)."""
    if not isinstance(document, dict):
        raise ValueError("the openid-configuration is not a JSON object")
    if document.get("issuer") not in (None, issuer, issuer.rstrip("/")):
        raise ValueError(f"the openid-configuration names issuer {document.get('issuer')!r}, not {issuer!r} "
                         "(OpenID Connect Discovery requires them to be equal)")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError("the openid-configuration has no jwks_uri")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.username or parsed.password:
        raise ValueError(f"its jwks_uri {uri!r} is not an http(s) URL with a host and no credentials")
    return uri


__all__ = ["UNAVAILABLE_JWKS", "UNAVAILABLE_KID", "WELL_KNOWN", "discovery_problem", "discovery_url", "jwks_uri_of"]
