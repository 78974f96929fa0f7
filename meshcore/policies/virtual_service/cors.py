"""VirtualService ``http[].corsPolicy`` (Istio's) -> Envoy's CORS filter and its per-route policy (schema, typed spec
and Envoy config in one module, so the VirtualService files only carry a hook each).

```yaml
http:
- corsPolicy:
    allowOrigins: [{exact: https://shop.example.com}, {prefix: "https://"}, {regex: "https://.*\\.example\\.com"}]
    allowMethods: [GET, POST]
    allowHeaders: [authorization, content-type]
    exposeHeaders: [x-request-id]
    maxAge: 24h
    allowCredentials: true
    unmatchedPreflights: FORWARD        # default; IGNORE: Envoy answers a preflight from another origin itself
  route: [...]
```

Envoy: the rule's routes carry an ``envoy.extensions.filters.http.cors.v3.CorsPolicy`` as
``typed_per_filter_config["envoy.filters.http.cors"]``; the outbound HTTP connection manager gets the CORS filter
(before the fault filter, so a preflight is answered without injected faults) the first time one of its routes has a
policy. Envoy answers a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an allowed
origin itself, with the ``Access-Control-Allow-*`` headers, and adds ``Access-Control-Allow-Origin`` (and
``-Expose-Headers``, ``-Allow-Credentials``) to the answers of actual requests from such an origin. A request from an
origin not allowed is forwarded without CORS headers (the browser then refuses the answer); a preflight from one is
forwarded too (``FORWARD``, Istio's default) or answered by Envoy without CORS headers (``IGNORE``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from meshcore.resources.kinds._fields import Dur, seconds
from meshcore.resources.schema import Bool, Custom, Deprecated, Enum, ListOf, Obj, Schema, Str

CORS_FILTER = "envoy.filters.http.cors"
FORWARD, IGNORE = "FORWARD", "IGNORE"
UNMATCHED_PREFLIGHTS = ("UNSPECIFIED", FORWARD, IGNORE)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods and header names


def _token_problem(what: str):
    def check(value: str) -> str | None:
        if value == "*":
            return None  # Envoy and browsers: any
        return None if _TOKEN.fullmatch(value) else f"{json.dumps(value)} is not an HTTP {what}"

    return check


def _method_problem(value: str) -> str | None:
    problem = _token_problem("method")(value)
    if problem:
        return problem
    if value != value.upper():
        return f"HTTP methods are case-sensitive: write {json.dumps(value.upper())}, not {json.dumps(value)}"
    return None


def _exact_origins(origins: Any) -> list[dict[str, str]]:
    """Istio's deprecated ``allowOrigin`` (a list of exact origins) as ``allowOrigins``."""
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise TypeError("expected a list of origins (strings)")
    if "*" in origins:
        raise ValueError('"*" would be matched as the exact text "*"; to allow every origin write '
                         "allowOrigins: [{regex: \".*\"}]")
    return [{"exact": o} for o in origins]


def cors_policy_schema(string_match: Schema) -> Obj:
    """The ``corsPolicy`` schema; ``string_match`` is VirtualService's ``exact | prefix | regex``."""
    return Obj(
        {
            "allowOrigins": ListOf(string_match, min_items=1),
            "allowMethods": ListOf(Custom(Str(min_len=1), _method_problem), min_items=1),
            "allowHeaders": ListOf(Custom(Str(min_len=1), _token_problem("header name")), min_items=1),
            "exposeHeaders": ListOf(Custom(Str(min_len=1), _token_problem("header name")), min_items=1),
            "maxAge": Dur(),
            "allowCredentials": Bool(),
            "unmatchedPreflights": Enum(*UNMATCHED_PREFLIGHTS),
        },
        deprecated={"allowOrigin": Deprecated("allowOrigins", convert=_exact_origins,
                                              why="deprecated in Istio (exact origins)")},
    )


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[tuple[str, str], ...] = ()  # (exact | prefix | regex, value)
    methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_s: int | None = None
    allow_credentials: bool | None = None
    forward_unmatched_preflights: bool = True


def parse_cors(block: Mapping[str, Any] | None) -> CorsPolicy | None:
    """The typed ``corsPolicy`` the schema accepted; None when the rule has none."""
    if not block:
        return None
    origins = []
    for m in block.get("allowOrigins") or ():
        kind = next(k for k in ("exact", "prefix", "regex") if k in m)
        origins.append((kind, m[kind]))
    return CorsPolicy(
        origins=tuple(origins),
        methods=tuple(block.get("allowMethods") or ()),
        allow_headers=tuple(block.get("allowHeaders") or ()),
        expose_headers=tuple(block.get("exposeHeaders") or ()),
        max_age_s=int(seconds(block["maxAge"])) if block.get("maxAge") else None,
        allow_credentials=block.get("allowCredentials"),
        forward_unmatched_preflights=block.get("unmatchedPreflights") != IGNORE,
    )


def _origin(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == "exact":
        return string_pb2.StringMatcher(exact=value)
    if kind == "prefix":
        return string_pb2.StringMatcher(prefix=value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))


def cors_per_route(policy: CorsPolicy) -> cors_pb2.CorsPolicy:
    """The route's Envoy CORS policy (headers comma-joined, ``max-age`` in whole seconds)."""
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_origin(k, v) for k, v in policy.origins],
        allow_methods=",".join(policy.methods),
        allow_headers=",".join(policy.allow_headers),
        expose_headers=",".join(policy.expose_headers),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(value=policy.forward_unmatched_preflights),
    )
    if policy.max_age_s is not None:
        out.max_age = str(policy.max_age_s)
    if policy.allow_credentials is not None:
        out.allow_credentials.value = policy.allow_credentials
    return out


def set_cors(route: Message, policy: CorsPolicy) -> None:
    """Give an Envoy ``Route`` its CORS policy (in place)."""
    route.typed_per_filter_config[CORS_FILTER].Pack(cors_per_route(policy))  # type: ignore[attr-defined]


def ensure_cors_filter(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Add the CORS filter to an outbound ``hcm`` (in place) unless it has one: before the fault filter, or else before
    the router. It does nothing for a route without a policy."""
    from ...xds.generate import policy_filters as pf
    from ...xds.generate.vocab import pack

    names = [f.name for f in hcm.http_filters]
    if CORS_FILTER in names:
        return
    at = names.index(pf.FAULT) if pf.FAULT in names else len(names) - 1
    hcm.http_filters.insert(at, hcm_pb2.HttpFilter(name=CORS_FILTER, typed_config=pack(cors_pb2.Cors())))


__all__ = ["CORS_FILTER", "CorsPolicy", "cors_policy_schema", "cors_per_route", "ensure_cors_filter", "parse_cors",
           "set_cors", "UNMATCHED_PREFLIGHTS"]
