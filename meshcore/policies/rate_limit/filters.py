"""RateLimit's Envoy configs (pure): the HTTP local rate limit a workload's inbound route carries, the network
local rate limits of a TCP workload, and the regular expressions its ``match`` becomes. :mod:`.plugin` puts them
into the generated resources; its docstring tells how requests and connections are limited.
"""

from __future__ import annotations

from typing import Sequence

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as net_rl_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2

from ...authz.patterns import ANY, EXACT, PREFIX, Pattern, re_escape
from ...resources.kinds._fields import UINT32_MAX
from ...resources.model import Resource
from ...xds.generate import vocab as c
from .spec import Limit, spec_of

HTTP_LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
NETWORK_LOCAL_RATELIMIT = "envoy.filters.network.local_ratelimit"
DESCRIPTOR_KEY = "meshcore_limit"
XFCC = "x-forwarded-client-cert"


def stat_prefix(resource: Resource) -> str:
    """``ratelimit.<ns>.<name>``: the stats of one RateLimit (dots inside a name would split it, so ``_``)."""
    return ".".join(["ratelimit", resource.namespace.replace(".", "_"), resource.name.replace(".", "_")])


# --- match -> regular expressions (full match, RE2) --------------------------------------------------


def path_regex(values: Sequence[str]) -> str:
    """``:path`` carries the query string; paths are matched without it, as AuthorizationPolicy does."""
    alts = []
    for v in values:
        p = Pattern.parse(v)
        if p.kind == ANY:
            alts.append(r"[^?]+(\?.*)?")
        elif p.kind == PREFIX:
            alts.append(re_escape(p.text) + ".*")
        elif p.kind == EXACT:
            alts.append(re_escape(p.text) + r"(\?.*)?")
        else:
            alts.append(r"[^?]*" + re_escape(p.text) + r"(\?.*)?")
    return "(?:" + "|".join(alts) + ")"


def _value_regex(values: Sequence[str], segment: str) -> str:
    alts = []
    for v in values:
        p = Pattern.parse(v)
        if p.kind == ANY:
            alts.append(segment + "+")
        elif p.kind == PREFIX:
            alts.append(re_escape(p.text) + segment + "*")
        elif p.kind == EXACT:
            alts.append(re_escape(p.text))
        else:
            alts.append(segment + "*" + re_escape(p.text))
    return "(?:" + "|".join(alts) + ")"


def method_regex(values: Sequence[str]) -> str:
    return _value_regex(values, r"[^\s]")


def source_regex(values: Sequence[str]) -> str:
    """The peer's ``URI=spiffe://<principal>`` element of ``x-forwarded-client-cert`` (``By=...;Hash=...;URI=...``)."""
    return r"(?:.*;)?URI=spiffe://" + _value_regex(values, "[^;,]") + r"(?:;.*)?"


def _regex_header(name: str, regex: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex)))


def limit_action(limit: Limit, value: int | str) -> rc.RateLimit:
    """The action producing descriptor ``meshcore_limit=<value>`` for one limit: generic (every request) or on
    its ``match``. ``value``: the descriptor value, or the limit's index (then its name or ``limits[i]``)."""
    if isinstance(value, int):
        value = limit.id(value)
    match = limit.match
    if match is None:
        action = rc.RateLimit.Action(generic_key=rc.RateLimit.Action.GenericKey(
            descriptor_key=DESCRIPTOR_KEY, descriptor_value=value))
        return rc.RateLimit(actions=[action])
    headers = []
    if match.paths:
        headers.append(_regex_header(":path", path_regex(match.paths)))
    if match.methods:
        headers.append(_regex_header(":method", method_regex(match.methods)))
    if match.sources:
        headers.append(_regex_header(XFCC, source_regex(match.sources)))
    action = rc.RateLimit.Action(header_value_match=rc.RateLimit.Action.HeaderValueMatch(
        descriptor_key=DESCRIPTOR_KEY, descriptor_value=value,
        expect_match=wrappers_pb2.BoolValue(value=True), headers=headers))
    return rc.RateLimit(actions=[action])


def token_bucket(limit: Limit) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=limit.max_tokens,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.tokens_per_fill),
        fill_interval=c.seconds(limit.fill_interval),
    )


def _always(runtime_key: str) -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        runtime_key=runtime_key,
        default_value=percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED))


def merged_stat_prefix(resources: Sequence[Resource]) -> str:
    """The stat prefix of the one filter config several RateLimits share (names of another namespace as ``ns/name``)."""
    first = resources[0]
    names = [r.name if r.namespace == first.namespace else f"{r.namespace}/{r.name}" for r in resources]
    return ".".join(["ratelimit", first.namespace.replace(".", "_"), "+".join(n.replace(".", "_") for n in names)])


def _limits(resources: Sequence[Resource]) -> list[tuple[str, Limit]]:
    """(descriptor value, limit) of every limit; values qualified by resource when several share the filter."""
    out = []
    for r in resources:
        for i, limit in enumerate(spec_of(r).limits):
            value = limit.id(i)
            out.append((value if len(resources) == 1 else f"{r.namespace}/{r.name}/{value}", limit))
    return out


def http_local_rate_limit(resource: Resource | Sequence[Resource]) -> http_rl_pb2.LocalRateLimit:
    """The HTTP local rate limit config of one RateLimit, or of several merged into one (pure)."""
    resources = [resource] if isinstance(resource, Resource) else sorted(resource, key=lambda r: (r.namespace, r.name))
    limits = _limits(resources)
    prefix = stat_prefix(resources[0]) if len(resources) == 1 else merged_stat_prefix(resources)
    retry_after = max(limit.retry_after_seconds for _, limit in limits)
    hvo = base_pb2.HeaderValueOption
    return http_rl_pb2.LocalRateLimit(
        stat_prefix=prefix,
        # Never consumed while a limit matches; unlimited for the requests no limit matches.
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=UINT32_MAX, tokens_per_fill=wrappers_pb2.UInt32Value(value=UINT32_MAX),
            fill_interval=c.seconds(1)),
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
        filter_enabled=_always(f"meshcore.{prefix}.enabled"),
        filter_enforced=_always(f"meshcore.{prefix}.enforced"),
        response_headers_to_add=[hvo(header=base_pb2.HeaderValue(key="retry-after", value=str(retry_after)),
                                     append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD)],
        rate_limits=[limit_action(limit, value) for value, limit in limits],
        descriptors=[
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=DESCRIPTOR_KEY, value=value)],
                token_bucket=token_bucket(limit))
            for value, limit in limits
        ],
    )


def network_local_rate_limits(resource: Resource) -> list[net_rl_pb2.LocalRateLimit]:
    """For TCP workloads: one connection limit per limit without ``match`` (pure)."""
    return [net_rl_pb2.LocalRateLimit(stat_prefix=stat_prefix(resource), token_bucket=token_bucket(limit))
            for limit in spec_of(resource).limits if limit.match is None]


__all__ = [
    "http_local_rate_limit", "network_local_rate_limits", "limit_action", "token_bucket", "merged_stat_prefix",
    "path_regex", "method_regex", "source_regex", "stat_prefix",
    "HTTP_LOCAL_RATELIMIT", "NETWORK_LOCAL_RATELIMIT", "DESCRIPTOR_KEY",
]
