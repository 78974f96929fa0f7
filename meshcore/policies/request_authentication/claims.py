"""Routing on a verified JWT's claims, as Istio spells it: a VirtualService ``match[].headers`` key
``@request.auth.claims.<claim>`` (nested: ``@request.auth.claims.realm.role``) at an ingress gateway a
RequestAuthentication selects.

It is no header: the route matches Envoy's dynamic metadata that ``jwt_authn`` wrote (the verified payload), so a
client cannot route itself by sending a header of that name, and a request without a valid token matches no claim.
The gateway's ``jwt_authn`` providers clear the route cache (``clear_route_cache``) so routes are chosen after the
token is verified.
"""

from __future__ import annotations

import json
import re

from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

from .jwt import JWT_METADATA_NS, PAYLOAD_KEY

CLAIM_PREFIX = "@request.auth.claims."
_CLAIM_PATH = re.compile(r"[^\s.]+(\.[^\s.]+)*")


def is_claim_key(name: str) -> bool:
    return name.startswith("@")


def claim_key_problem(name: str) -> str | None:
    """Why ``name`` is not a claim match key (``@request.auth.claims.<claim>[.<claim>...]``), or None."""
    if not name.startswith(CLAIM_PREFIX) or not _CLAIM_PATH.fullmatch(name[len(CLAIM_PREFIX):]):
        return (f"{json.dumps(name)}: a claim match is written @request.auth.claims.<claim> (nested: "
                "@request.auth.claims.<claim>.<claim>)")
    return None


def claim_path(name: str) -> tuple[str, ...]:
    return tuple(name[len(CLAIM_PREFIX):].split("."))


def claim_route_matcher(name: str, kind: str, value: str) -> metadata_pb2.MetadataMatcher:
    """The route's metadata matcher for a claim: ``exact``/``prefix``/``regex`` (a list claim: one of its elements),
    ``present`` (Istio's ``{}``): the claim is there."""
    path = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (PAYLOAD_KEY, *claim_path(name))]
    if kind == "present":
        return metadata_pb2.MetadataMatcher(filter=JWT_METADATA_NS, path=path,
                                            value=value_pb2.ValueMatcher(present_match=True))
    if kind == "regex":
        string = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))
    else:
        string = string_pb2.StringMatcher(**{kind: value})
    value_matcher = value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=[
        value_pb2.ValueMatcher(string_match=string),
        value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=value_pb2.ValueMatcher(string_match=string))),
    ]))
    return metadata_pb2.MetadataMatcher(filter=JWT_METADATA_NS, path=path, value=value_matcher)


__all__ = ["CLAIM_PREFIX", "claim_key_problem", "claim_path", "claim_route_matcher", "is_claim_key"]
