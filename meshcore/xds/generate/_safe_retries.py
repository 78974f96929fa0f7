"""Default retries for requests in flight when an instance's Envoy dies (issue 12, finding 14).

Istio's default retry conditions (``connect-failure,refused-stream,unavailable,cancelled,
retriable-status-codes`` with 503; meshcore adds ``reset-before-request``) cover every failure where the
request never reached the app. A request already sent on a pooled connection when the instance's Envoy is
SIGKILLed fails with a reset *after* it was sent ("upstream connect error or disconnect/reset before headers.
reset reason: connection termination"): Istio does not retry it, since the app may have processed it.

For requests with a safe method (RFC 9110 section 9.2.1: ``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``) repeating
them changes nothing, so every generated outbound route configuration holds, ahead of its ``default`` route,
a twin ``default-safe-methods`` matching ``:method`` whose retry policy adds ``reset`` (to another instance,
like every default retry). Same cluster, timeout and everything plugins add to each route (a DestinationRule's
hash policy, rate limits); every other method keeps Istio's conditions. A VirtualService replaces both, as it
replaced the default route before.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
SAFE_METHODS_ROUTE = "default-safe-methods"
RESET = "reset"


_METHOD_MATCH = rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(
    safe_regex=regex_pb2.RegexMatcher(regex="|".join(SAFE_METHODS))))


def safe_methods_route(default: rc.Route) -> rc.Route:
    """``default``'s twin for requests with a safe method: the same action, its retries also on ``reset``."""
    route = rc.Route()
    route.CopyFrom(default)
    route.name = SAFE_METHODS_ROUTE
    route.match.headers.append(_METHOD_MATCH)  # (appends a copy)
    policy = route.route.retry_policy
    if RESET not in policy.retry_on.split(","):
        policy.retry_on = f"{policy.retry_on},{RESET}" if policy.retry_on else RESET
    return route


def with_safe_methods_route(routes: list[rc.Route]) -> list[rc.Route]:
    """``routes`` (one default route with a retry policy) with its safe-methods twin first."""
    return [safe_methods_route(routes[0]), *routes]


__all__ = ["SAFE_METHODS", "SAFE_METHODS_ROUTE", "safe_methods_route", "with_safe_methods_route"]
