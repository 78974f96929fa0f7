"""RequestAuthentication's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into a :class:`RequestAuthenticationSpec`;
each ``jwtRules[]`` entry becomes a :class:`JwtRule` with Istio's defaults (token from ``Authorization: Bearer``
and the ``access_token`` query parameter when no location is written, the token removed before the request
reaches the workload unless ``forwardOriginalToken``, a JWKS fetch timeout of 5 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.kinds._fields import seconds
from meshcore.resources.model import Resource

DEFAULT_JWKS_TIMEOUT_S = 5.0
"""Istio's default ``timeout`` for fetching a remote JWKS."""
DEFAULT_SPACE_DELIMITED_CLAIMS = ("scope", "permission")
"""Claims Istio always reads as space-delimited lists (OAuth 2.0 ``scope``, RFC 8693), whatever
``spaceDelimitedClaims`` says."""


@dataclass(frozen=True)
class HeaderLocation:
    name: str
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = None
    jwks: str | None = None  # inline JSON Web Key Set (a JSON string, as Istio writes it)
    from_headers: tuple[HeaderLocation, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout_s: float = DEFAULT_JWKS_TIMEOUT_S
    space_delimited_claims: tuple[str, ...] = ()  # as written; :attr:`split_claims` adds Istio's defaults

    @property
    def split_claims(self) -> tuple[str, ...]:
        """The claims whose string value is a space-delimited list: Istio's ``scope`` and ``permission`` always, then
        ``spaceDelimitedClaims``."""
        return tuple(dict.fromkeys((*DEFAULT_SPACE_DELIMITED_CLAIMS, *self.space_delimited_claims)))


@dataclass(frozen=True)
class RequestAuthenticationSpec:
    match_labels: tuple[tuple[str, str], ...] = ()  # empty: every workload of the namespace (or of the mesh)
    jwt_rules: tuple[JwtRule, ...] = ()


def _rule(rule: Mapping[str, Any]) -> JwtRule:
    return JwtRule(
        issuer=rule["issuer"],
        audiences=tuple(rule.get("audiences") or ()),
        jwks_uri=rule.get("jwksUri") or None,
        jwks=rule.get("jwks") or None,
        from_headers=tuple(HeaderLocation(h["name"], h.get("prefix") or "") for h in rule.get("fromHeaders") or ()),
        from_params=tuple(rule.get("fromParams") or ()),
        from_cookies=tuple(rule.get("fromCookies") or ()),
        forward_original_token=bool(rule.get("forwardOriginalToken")),
        output_payload_to_header=rule.get("outputPayloadToHeader") or None,
        output_claim_to_headers=tuple(ClaimToHeader(o["header"], o["claim"])
                                      for o in rule.get("outputClaimToHeaders") or ()),
        timeout_s=seconds(rule["timeout"]) if rule.get("timeout") else DEFAULT_JWKS_TIMEOUT_S,
        space_delimited_claims=tuple(rule.get("spaceDelimitedClaims") or ()),
    )


def parse(spec: Mapping[str, Any]) -> RequestAuthenticationSpec:
    """The typed spec of a RequestAuthentication whose ``spec`` the schema accepted."""
    selector = spec.get("selector") or {}
    return RequestAuthenticationSpec(
        match_labels=tuple(sorted((selector.get("matchLabels") or {}).items())),
        jwt_rules=tuple(_rule(r) for r in spec.get("jwtRules") or ()),
    )


def spec_of(resource: Resource) -> RequestAuthenticationSpec:
    """The typed spec of a RequestAuthentication resource (parsed once, kept on the resource)."""
    typed: RequestAuthenticationSpec = resource.typed
    return typed


__all__ = ["RequestAuthenticationSpec", "JwtRule", "HeaderLocation", "ClaimToHeader", "DEFAULT_JWKS_TIMEOUT_S",
           "DEFAULT_SPACE_DELIMITED_CLAIMS", "parse", "spec_of"]
