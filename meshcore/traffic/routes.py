"""VirtualService -> Envoy routes, fault filter config and weighted tcp_proxy (pure).

A rule's ``fault`` becomes its routes' ``typed_per_filter_config`` for the fault filter that every
outbound HTTP connection manager always carries (:data:`FAULT_FILTER`, see
:mod:`meshcore.xds.generate.policy_filters`), so faults travel by RDS and never change a listener.

A rule's ``match`` alternatives become one Envoy route each (same action), in order, named
``<ns>/<name>/http[i]`` (``.../match[j]`` when a rule has several alternatives). Which cluster a
destination means is asked from a callback, so this module knows nothing about proxies.
"""

from __future__ import annotations

from typing import Callable

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from .. import naming
from ..resources.kinds._fields import seconds
from ..resources.kinds.virtual_service import DEFAULT_RETRY_ON, split_retry_on
from ..resources.model import Resource
from ..xds.generate import vocab as c
from ..xds.generate import policy_filters as pf

FAULT_FILTER = pf.FAULT

ClusterFor = Callable[[str, "str | None"], str]
"""``(host, subset) -> cluster name`` (adds the cluster when it is new)."""
HashFor = Callable[[str, "str | None"], list]
"""``(host, subset) -> route hash policies`` of that destination's load balancer."""


def fraction(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage (0-100, fractions allowed) as Envoy's per-million fraction."""
    return percent_pb2.FractionalPercent(numerator=round(percent * 10_000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def _percent(block: dict) -> float:
    return float((block.get("percentage") or {}).get("value", 100))


def string_matcher(match: dict) -> string_pb2.StringMatcher:
    if "exact" in match:
        return string_pb2.StringMatcher(exact=match["exact"])
    if "prefix" in match:
        return string_pb2.StringMatcher(prefix=match["prefix"])
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match["regex"]))


def route_match(match: dict) -> rc.RouteMatch:
    """One ``match[]`` alternative: every condition in it must hold."""
    out = rc.RouteMatch()
    uri = match.get("uri") or {"prefix": "/"}
    if "exact" in uri:
        out.path = uri["exact"]
    elif "prefix" in uri:
        out.prefix = uri["prefix"]
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri["regex"]))
    if match.get("ignoreUriCase"):
        out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
    if match.get("method"):
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=string_matcher(match["method"])))
    for name, m in sorted((match.get("headers") or {}).items()):
        out.headers.append(rc.HeaderMatcher(name=name, string_match=string_matcher(m)))
    for name, m in sorted((match.get("queryParams") or {}).items()):
        out.query_parameters.append(rc.QueryParameterMatcher(name=name, string_match=string_matcher(m)))
    return out


def http_fault(fault: dict) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if "delay" in fault:
        d = fault["delay"]
        out.delay.CopyFrom(common_fault_pb2.FaultDelay(fixed_delay=c.seconds(seconds(d["fixedDelay"])),
                                                       percentage=fraction(_percent(d))))
    if "abort" in fault:
        a = fault["abort"]
        out.abort.CopyFrom(fault_pb2.FaultAbort(http_status=a["httpStatus"], percentage=fraction(_percent(a))))
    return out


def retry_policy(retries: dict) -> rc.RetryPolicy | None:
    """``attempts: 0`` turns retries off (no policy at all)."""
    if not retries.get("attempts"):
        return None
    conditions, codes = split_retry_on(retries.get("retryOn") or DEFAULT_RETRY_ON)
    out = rc.RetryPolicy(retry_on=conditions, num_retries=wrappers_pb2.UInt32Value(value=retries["attempts"]),
                         retriable_status_codes=codes)
    if "perTryTimeout" in retries:
        out.per_try_timeout.CopyFrom(c.seconds(seconds(retries["perTryTimeout"])))
    backoff = retries.get("backoff")
    if backoff:
        out.retry_back_off.base_interval.CopyFrom(c.seconds(seconds(backoff["baseInterval"])))
        if "maxInterval" in backoff:
            out.retry_back_off.max_interval.CopyFrom(c.seconds(seconds(backoff["maxInterval"])))
    return out


def _header_options(ops: dict) -> list[base_pb2.HeaderValueOption]:
    hvo = base_pb2.HeaderValueOption
    out = [hvo(header=base_pb2.HeaderValue(key=k, value=v), append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD)
           for k, v in sorted((ops.get("set") or {}).items())]
    out += [hvo(header=base_pb2.HeaderValue(key=k, value=v), append_action=hvo.APPEND_IF_EXISTS_OR_ADD)
            for k, v in sorted((ops.get("add") or {}).items())]
    return out


def _weighted(destinations: list[dict], cluster_for: ClusterFor) -> tuple[str | None, list[tuple[str, int]]]:
    """Single cluster, or weighted clusters; weight-0 destinations are left out (as Istio does)."""
    live = [d for d in destinations if d.get("weight", 100) > 0] if len(destinations) > 1 else destinations
    named = [(cluster_for(d["destination"]["host"], d["destination"].get("subset")), d.get("weight", 100)) for d in live]
    if len(named) == 1:
        return named[0][0], []
    return None, named


def route_action(rule: dict, cluster_for: ClusterFor, hash_for: HashFor, default_timeout: float) -> rc.RouteAction:
    single, weighted = _weighted(rule["route"], cluster_for)
    action = rc.RouteAction()
    if single is not None:
        action.cluster = single
    else:
        for name, weight in weighted:
            action.weighted_clusters.clusters.append(
                rc.WeightedCluster.ClusterWeight(name=name, weight=wrappers_pb2.UInt32Value(value=weight)))
    timeout = seconds(rule["timeout"]) if "timeout" in rule else default_timeout
    action.timeout.CopyFrom(c.seconds(timeout))
    if rule.get("retries"):
        policy = retry_policy(rule["retries"])
        if policy is not None:
            action.retry_policy.CopyFrom(policy)
    for d in rule["route"]:
        hashes = hash_for(d["destination"]["host"], d["destination"].get("subset"))
        if hashes:
            action.hash_policy.extend(hashes)
            break
    if rule.get("mirror"):
        m = rule["mirror"]
        mirror = rc.RouteAction.RequestMirrorPolicy(cluster=cluster_for(m["host"], m.get("subset")))
        percent = float((rule.get("mirrorPercentage") or {}).get("value", 100))
        mirror.runtime_fraction.default_value.CopyFrom(fraction(percent))
        action.request_mirror_policies.append(mirror)
    return action


def http_routes(vs: Resource, cluster_for: ClusterFor, hash_for: HashFor, default_timeout: float) -> list[rc.Route]:
    """Every ``http[]`` rule of ``vs`` as Envoy routes, in order."""
    routes: list[rc.Route] = []
    for i, rule in enumerate((vs.spec or {}).get("http") or ()):
        action = route_action(rule, cluster_for, hash_for, default_timeout)
        matches = rule.get("match") or [{}]
        for j, match in enumerate(matches):
            route = rc.Route(
                name=naming.virtual_service_route(vs.namespace, vs.name, i, j if len(matches) > 1 else None),
                match=route_match(match),
                route=action,
            )
            if rule.get("fault"):
                pf.set_fault_config(route, http_fault(rule["fault"]))
            headers = rule.get("headers") or {}
            req, resp = headers.get("request") or {}, headers.get("response") or {}
            route.request_headers_to_add.extend(_header_options(req))
            route.request_headers_to_remove.extend(req.get("remove") or [])
            route.response_headers_to_add.extend(_header_options(resp))
            route.response_headers_to_remove.extend(resp.get("remove") or [])
            routes.append(route)
    return routes


def has_fault(vs: Resource) -> bool:
    return any(rule.get("fault") for rule in (vs.spec or {}).get("http") or ())


def weighted_tcp(proxy: tcp_proxy_pb2.TcpProxy, vs: Resource, cluster_for: ClusterFor) -> bool:
    """Point ``proxy`` at the first ``tcp[]`` rule's destinations; False when ``vs`` has no tcp rule."""
    rules = (vs.spec or {}).get("tcp") or ()
    if not rules:
        return False
    single, weighted = _weighted(rules[0]["route"], cluster_for)
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
           "weighted_tcp", "has_fault", "fraction", "string_matcher"]
