"""VirtualService -> Envoy routes, fault filter config and weighted tcp_proxy (pure).

A rule's ``fault`` becomes its routes' ``typed_per_filter_config`` for the fault filter that every
outbound HTTP connection manager always carries (:data:`FAULT_FILTER`, see
:mod:`meshcore.xds.generate.policy_filters`), so faults travel by RDS and never change a listener.

A rule's ``match`` alternatives become one Envoy route each (same action), in order, named
``<ns>/<name>/http[i]`` (``.../match[j]`` when a rule has several alternatives). Which cluster a
destination means is asked from a callback, so this module knows nothing about proxies.
"""

from __future__ import annotations

from typing import Callable, Collection, Iterable, Mapping, Sequence

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from ... import naming
from ...resources.model import Resource
from ...xds.generate import policy_filters as pf
from ...xds.generate import vocab as c
from ...xds.generate.routes import default_retry_policy, retry_to_other_hosts
from ..gateway.schema import gateway_ref
from ..request_authentication.claims import claim_route_matcher, is_claim_key
from .cors import set_cors
from .delegation import http_rules
from .schema import DEFAULT_RETRY_ON, split_retry_on
from .spec import (
    EXACT,
    PREFIX,
    PRESENT,
    Destination,
    DirectResponse,
    ListenerPorts,
    Fault,
    HeaderOperations,
    HttpRoute,
    Match,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    TcpRoute,
    spec_of,
)

FAULT_FILTER = pf.FAULT
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"

ClusterFor = Callable[..., str]
"""``(host, subset) -> cluster name`` (adds the cluster when it is new); called ``(host, subset, port)`` for a
destination that names its ``port``."""
HashFor = Callable[..., list]
"""``(host, subset) -> route hash policies`` of that destination's load balancer; ``(host, subset, port)`` for a
destination that names its port."""


def fraction(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage (0-100, fractions allowed) as Envoy's per-million fraction."""
    return percent_pb2.FractionalPercent(numerator=round(percent * 10_000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def _header_matcher(name: str, match: StringMatch) -> rc.HeaderMatcher:
    if match.kind == PRESENT:
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=string_matcher(match))


def _query_matcher(name: str, match: StringMatch) -> rc.QueryParameterMatcher:
    if match.kind == PRESENT:
        return rc.QueryParameterMatcher(name=name, present_match=True)
    return rc.QueryParameterMatcher(name=name, string_match=string_matcher(match))


def destination_cluster(cluster_for: ClusterFor, d: Destination) -> str:
    """The cluster of one destination: ``cluster_for(host, subset)``, with the port when the destination names one
    (callbacks that never see a port keep their two-argument form)."""
    if d.port is None:
        return cluster_for(d.host, d.subset)
    return cluster_for(d.host, d.subset, d.port)


def string_matcher(match: StringMatch) -> string_pb2.StringMatcher:
    if match.kind == EXACT:
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind == PREFIX:
        return string_pb2.StringMatcher(prefix=match.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))


def route_match(match: Match) -> rc.RouteMatch:
    """One ``match[]`` alternative: every condition in it must hold."""
    out = rc.RouteMatch()
    uri = match.uri or StringMatch(PREFIX, "/")
    if uri.kind == EXACT:
        out.path = uri.value
    elif uri.kind == PREFIX:
        out.prefix = uri.value
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.value))
    if match.ignore_uri_case:
        out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
    if match.method is not None:
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=string_matcher(match.method)))
    if match.authority is not None:
        out.headers.append(rc.HeaderMatcher(name=":authority", string_match=string_matcher(match.authority)))
    if match.scheme is not None:
        out.headers.append(rc.HeaderMatcher(name=":scheme", string_match=string_matcher(match.scheme)))
    for name, m in match.headers:
        if is_claim_key(name):  # a verified JWT's claim (gateways): the route matches jwt_authn's metadata
            out.dynamic_metadata.append(claim_route_matcher(name, m.kind, m.value))
            continue
        out.headers.append(_header_matcher(name, m))
    for name, m in match.without_headers:  # Istio's withoutHeaders: the header must not match (absent for {})
        if is_claim_key(name):
            claim = claim_route_matcher(name, m.kind, m.value)
            claim.invert = True
            out.dynamic_metadata.append(claim)
            continue
        inverted = _header_matcher(name, m)
        inverted.invert_match = True
        out.headers.append(inverted)
    for name, m in match.query_params:
        out.query_parameters.append(_query_matcher(name, m))
    return out


def http_fault(fault: Fault) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if fault.delay is not None:
        d = fault.delay
        out.delay.CopyFrom(common_fault_pb2.FaultDelay(fixed_delay=c.seconds(d.fixed_delay),
                                                       percentage=fraction(d.percentage)))
    if fault.abort is not None:
        a = fault.abort
        abort = fault_pb2.FaultAbort(percentage=fraction(a.percentage))
        if a.grpc_status is not None:
            abort.grpc_status = a.grpc_status  # Envoy answers the gRPC status in grpc-status (HTTP 200 trailers)
        elif a.http_status is not None:
            abort.http_status = a.http_status
        out.abort.CopyFrom(abort)
    return out


def retry_policy(retries: Retries) -> rc.RetryPolicy | None:
    """``attempts: 0`` turns retries off (no policy at all); each retry goes to another host (as Istio's)."""
    if not retries.attempts:
        return None
    conditions, codes = split_retry_on(retries.retry_on or DEFAULT_RETRY_ON)
    out = rc.RetryPolicy(retry_on=conditions, num_retries=wrappers_pb2.UInt32Value(value=retries.attempts),
                         retriable_status_codes=codes)
    if retries.per_try_timeout is not None:
        out.per_try_timeout.CopyFrom(c.seconds(retries.per_try_timeout))
    if retries.backoff_base_interval is not None:
        out.retry_back_off.base_interval.CopyFrom(c.seconds(retries.backoff_base_interval))
        if retries.backoff_max_interval is not None:
            out.retry_back_off.max_interval.CopyFrom(c.seconds(retries.backoff_max_interval))
    if retries.remote_localities:
        # As Istio: each retry skips the priorities (meshcore: datacenters by failover rank) already tried.
        out.retry_priority.name = PREVIOUS_PRIORITIES
        out.retry_priority.typed_config.CopyFrom(c.pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(
            update_frequency=2)))
    return retry_to_other_hosts(out) if retries.ignore_previous_hosts else out


def _header_options(ops: HeaderOperations) -> list[base_pb2.HeaderValueOption]:
    hvo = base_pb2.HeaderValueOption
    out = [hvo(header=base_pb2.HeaderValue(key=k, value=v), append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD)
           for k, v in ops.set]
    out += [hvo(header=base_pb2.HeaderValue(key=k, value=v), append_action=hvo.APPEND_IF_EXISTS_OR_ADD)
            for k, v in ops.add]
    return out


def _weighted(destinations: Sequence[RouteDestination], cluster_for: ClusterFor) -> tuple[str | None, list[tuple[str, int]]]:
    """Single cluster, or weighted clusters; weight-0 destinations are left out (as Istio does)."""
    live = [d for d in destinations if d.weight > 0] if len(destinations) > 1 else destinations
    named = [(destination_cluster(cluster_for, d.destination), d.weight) for d in live]
    if len(named) == 1:
        return named[0][0], []
    return None, named


def route_action(rule: HttpRoute, cluster_for: ClusterFor, hash_for: HashFor, default_timeout: float) -> rc.RouteAction:
    single, weighted = _weighted(rule.route, cluster_for)
    action = rc.RouteAction()
    if single is not None:
        action.cluster = single
    else:
        live = [d for d in rule.route if d.weight > 0]
        for (name, weight), d in zip(weighted, live):
            cw = rc.WeightedCluster.ClusterWeight(name=name, weight=wrappers_pb2.UInt32Value(value=weight))
            if d.request_headers is not None:
                cw.request_headers_to_add.extend(_header_options(d.request_headers))
                cw.request_headers_to_remove.extend(d.request_headers.remove)
            if d.response_headers is not None:
                cw.response_headers_to_add.extend(_header_options(d.response_headers))
                cw.response_headers_to_remove.extend(d.response_headers.remove)
            action.weighted_clusters.clusters.append(cw)
    action.timeout.CopyFrom(c.seconds(rule.timeout if rule.timeout is not None else default_timeout))
    # No ``retries``: the mesh default (Istio's); ``retries`` replaces it (``attempts: 0``: none at all).
    policy = default_retry_policy() if rule.retries is None else retry_policy(rule.retries)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    for d in rule.route:
        dest = d.destination
        hashes = (hash_for(dest.host, dest.subset) if dest.port is None
                  else hash_for(dest.host, dest.subset, dest.port))
        if hashes:
            action.hash_policy.extend(hashes)
            break
    for m in rule.mirrors:
        mirror = rc.RouteAction.RequestMirrorPolicy(cluster=destination_cluster(cluster_for, m.destination))
        mirror.runtime_fraction.default_value.CopyFrom(fraction(m.percentage))
        action.request_mirror_policies.append(mirror)
    if rule.rewrite is not None:
        _rewrite(action, rule.rewrite)
    return action


def _rewrite(action: rc.RouteAction, rw: Rewrite) -> None:
    """Istio's rewrite: ``uri`` replaces the matched prefix (the whole path under an exact match), ``authority``
    the Host, ``uriRegexRewrite`` substitutes by RE2."""
    if rw.uri is not None:
        action.prefix_rewrite = rw.uri
    if rw.regex_match is not None:
        action.regex_rewrite.pattern.regex = rw.regex_match
        action.regex_rewrite.substitution = rw.regex_rewrite or ""
    if rw.authority is not None:
        action.host_rewrite_literal = rw.authority


_REDIRECT_CODES = {301: rc.RedirectAction.MOVED_PERMANENTLY, 302: rc.RedirectAction.FOUND,
                   303: rc.RedirectAction.SEE_OTHER, 307: rc.RedirectAction.TEMPORARY_REDIRECT,
                   308: rc.RedirectAction.PERMANENT_REDIRECT}


def redirect_action(r: Redirect, listener_port: int | None = None) -> rc.RedirectAction:
    """``derivePort: FROM_REQUEST_PORT`` is the port of the listener the routes are for (Envoy cannot derive it
    per request; each meshcore listener has one port), as Istio does; ``FROM_PROTOCOL_DEFAULT`` is Envoy's own
    behaviour (no port in the Location: the scheme's default)."""
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[r.code])
    if r.uri is not None:
        out.path_redirect = r.uri
    if r.prefix_rewrite is not None:
        out.prefix_rewrite = r.prefix_rewrite
    if r.authority is not None:
        out.host_redirect = r.authority
    if r.port is not None:
        out.port_redirect = r.port
    elif r.derive_port == "FROM_REQUEST_PORT" and listener_port is not None:
        out.port_redirect = listener_port
    if r.scheme is not None:
        out.scheme_redirect = r.scheme
    return out


def direct_response(d: DirectResponse) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=d.status)
    if d.body is not None:
        out.body.inline_string = d.body
    elif d.body_bytes is not None:
        out.body.inline_bytes = d.body_bytes
    return out


def route_name(vs: Resource, i: int, rule: HttpRoute, j: int, match: Match, alternatives: int) -> str:
    """As Istio names it: ``http[].name``, with ``.<match name>`` when the match has one; unnamed rules keep
    meshcore's ``<ns>/<name>/http[i]`` (``/match[j]`` when the rule has several alternatives)."""
    base = rule.name or naming.virtual_service_route(vs.namespace, vs.name, i, j if alternatives > 1 else None)
    return f"{base}.{match.name}" if match.name else base


def http_routes(vs: Resource, cluster_for: ClusterFor, hash_for: HashFor, default_timeout: float,
                caller: tuple[Mapping[str, str], str] | None = None, gateway: str = "mesh",
                port: int | None = None, services: Iterable[Resource] = (),
                host_ports: Callable[[], Collection[int]] | None = None) -> list[rc.Route]:
    """Every ``http[]`` rule of ``vs`` as Envoy routes, in order. ``caller`` (labels, namespace) of the proxy the
    routes are for: match alternatives whose ``sourceLabels``/``sourceNamespace`` it does not meet are left out, and a
    rule left without any alternative with them (Istio's reading). ``port``: the listener's port (match ``port``,
    ``derivePort``), ``host_ports`` (sidecars) the host's port a match ``port`` may name instead (Istio's service
    port); ``services``: the VirtualServices delegates are found among (:mod:`.delegation`)."""
    listener = ListenerPorts(port, host_ports)
    routes: list[rc.Route] = []
    for resolved in http_rules(vs, services):
        owner, i, rule = resolved.vs, resolved.index, resolved.rule
        matches = rule.match or (Match(),)
        for j, match in enumerate(matches):
            if caller is not None and not match.from_caller(*caller):
                continue
            if not match.on_listener(listener):
                continue  # Istio's match port: this alternative is for another listener
            if match.gateways and not any(g == gateway or gateway_ref(vs.namespace, g) == gateway
                                          for g in match.gateways):
                continue  # Istio's match gateways: this alternative is for other gateways (or only for the mesh)
            route = rc.Route(name=route_name(owner, i, rule, j, match, len(matches)), match=route_match(match))
            if match.stat_prefix:
                route.stat_prefix = match.stat_prefix
            if rule.redirect is not None:
                route.redirect.CopyFrom(redirect_action(rule.redirect, port))
            elif rule.direct_response is not None:
                route.direct_response.CopyFrom(direct_response(rule.direct_response))
            else:
                route.route.CopyFrom(route_action(rule, cluster_for, hash_for, default_timeout))
            if rule.fault is not None:
                pf.set_fault_config(route, http_fault(rule.fault))
            if rule.cors is not None:
                set_cors(route, rule.cors)
            route.request_headers_to_add.extend(_header_options(rule.request_headers))
            route.request_headers_to_remove.extend(rule.request_headers.remove)
            route.response_headers_to_add.extend(_header_options(rule.response_headers))
            route.response_headers_to_remove.extend(rule.response_headers.remove)
            live = [d for d in rule.route if d.weight > 0] if len(rule.route) > 1 else list(rule.route)
            if len(live) == 1:  # one cluster: its destination's headers go on the route, as Istio does
                for ops, add, remove in ((live[0].request_headers, route.request_headers_to_add,
                                          route.request_headers_to_remove),
                                         (live[0].response_headers, route.response_headers_to_add,
                                          route.response_headers_to_remove)):
                    if ops is not None:
                        add.extend(_header_options(ops))
                        remove.extend(ops.remove)
            routes.append(route)
    return routes


def has_fault(vs: Resource) -> bool:
    return spec_of(vs).has_fault


def tcp_rule(vs: Resource, caller: tuple[Mapping[str, str], str] | None, port: int | None,
             gateway: str = "mesh", host_ports: Callable[[], Collection[int]] | None = None) -> TcpRoute | None:
    """The first ``tcp[]`` rule of ``vs`` that applies to ``caller`` (labels, namespace) on a listener of ``port`` at
    ``gateway`` ("mesh": a sidecar): one without ``match``, or with an alternative whose port, sourceLabels,
    sourceNamespace and gateways all hold (a port: the listener's, or the host's from ``host_ports``, as for http
    matches). Decided at build time: each listener has one port and one caller."""
    listener = ListenerPorts(port, host_ports)
    for rule in spec_of(vs).tcp:
        if not rule.match:
            return rule
        for m in rule.match:
            if caller is not None and not m.from_caller(*caller):
                continue
            if not listener.admits(m.port):
                continue
            gateways = m.gateways or spec_of(vs).gateways
            if not any(g == gateway or gateway_ref(vs.namespace, g) == gateway for g in gateways):
                continue
            return rule
    return None


def weighted_tcp(proxy: tcp_proxy_pb2.TcpProxy, vs: Resource, cluster_for: ClusterFor,
                 caller: tuple[Mapping[str, str], str] | None = None, port: int | None = None,
                 host_ports: Callable[[], Collection[int]] | None = None) -> bool:
    """Point ``proxy`` at the destinations of the first ``tcp[]`` rule that applies (:func:`tcp_rule`); False (the
    proxy left as it is: the upstream itself, as Istio falls back to the service's cluster) when none does."""
    rule = tcp_rule(vs, caller, port, host_ports=host_ports)
    if rule is None:
        return False
    single, weighted = _weighted(rule.route, cluster_for)
    proxy.ClearField("cluster")
    proxy.ClearField("weighted_clusters")
    if single is not None:
        proxy.cluster = single
    else:
        for name, weight in weighted:
            proxy.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight))
    return True


__all__ = ["FAULT_FILTER", "http_routes", "http_fault", "route_match", "route_action", "retry_policy",
           "weighted_tcp", "tcp_rule", "destination_cluster", "has_fault", "fraction", "string_matcher", "route_name"]
