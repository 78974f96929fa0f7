"""AuthorizationPolicy: compile Istio-style policies into Envoy RBAC rules for the inbound side of each workload.

HTTP workloads: every inbound HTTP connection manager always carries three RBAC filters with no rules
(:mod:`meshcore.xds.generate.policy_filters`: ``meshcore.authz.audit``, ``meshcore.authz.deny``,
``meshcore.authz.allow``, before the router); this plugin never touches the listener. It puts the rules
into the instance's inbound route configuration instead, as ``RBACPerRoute`` on its virtual host keyed
by those filter names, so a policy change is an RDS update that applies to the next request on every
connection, pooled keep-alive ones included. The stages, in evaluation order:

1. AUDIT: action LOG over every AUDIT policy (never blocks; its per-rule counters count matches);
2. DENY: action DENY over every DENY policy's rules (any rule matching denies);
3. ALLOW: action ALLOW over every ALLOW policy's rules, present as soon as an ALLOW policy selects the
   workload: no rule matching (or none at all) then denies.

A stage without policies gets no per-route config and passes everything. Stats:
``http.<listener>.rbac.authz.<stage>.{allowed,denied}`` and per rule
``http.<listener>.rbac.authz.<stage>.policy.<ns>/<name>[<index>].{allowed,denied}`` (the DENY stage's
per-rule counters say which DENY policy denied).

TCP workloads (``meta protocol=tcp``) keep ``envoy.filters.network.rbac`` filters in each inbound filter
chain before ``tcp_proxy`` (network filters have no per-route config): AUDIT, one DENY filter per DENY
policy in (namespace, name) order, then ALLOW (stats
``tcp.<listener>.authz.<action>[.<ns>.<name>].rbac.{allowed,denied}``). A TCP policy change is
therefore a listener update and applies to new connections; open ones keep the old policy until
Envoy drains them.

Each Envoy RBAC policy is one rule, named ``<ns>/<name>[<index>]``; a 403 carries it in the response code
details (``rbac_access_denied_matched_policy[default/deny-post[0]]``).

Rules are read by :func:`meshcore.authz.policy_rules`, the same reading :func:`meshcore.authz.decide`
evaluates, including Istio's TCP rule (ALLOW rules using HTTP-only fields are dropped, DENY and AUDIT
rules lose those fields). ``ports`` and ``destination.port`` name the workload's own port; each
inbound listener serves one workload port, so they are resolved here, per listener.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from .. import naming
from ..authz.patterns import ANY, EXACT, PREFIX, Pattern, host_regex, spiffe_namespace_regex
from ..authz.rules import (
    DESTINATION_PORT,
    REQUEST_HEADERS,
    REQUEST_HOST,
    REQUEST_METHOD,
    REQUEST_PATH,
    SOURCE_IP,
    SOURCE_NAMESPACE,
    SOURCE_PRINCIPAL,
    Condition,
    PolicyRules,
    Rule,
    policy_rules,
)
from ..catalog.model import ServiceInstance
from ..errors import SnapshotInvalid
from ..resources.kinds.authorization_policy import ALLOW, AUDIT, DENY, KIND_NAME, policies_for
from ..resources.model import Resource
from ..snapshot import MeshSnapshot, ProxyInfo
from ..xds.generate import vocab as c
from ..xds.generate import policy_filters as pf
from ._inbound import inbound_targets

KIND = KIND_NAME
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
_ENVOY_ACTION = {ALLOW: rbac_pb2.RBAC.ALLOW, DENY: rbac_pb2.RBAC.DENY, AUDIT: rbac_pb2.RBAC.LOG}

Permission = rbac_pb2.Permission
Principal = rbac_pb2.Principal
_Matcher = Permission | Principal | bool  # True/False: decided here (ports), nothing to send to Envoy


@dataclass(frozen=True)
class RbacStage:
    """One RBAC stage: ``label`` names it in stats (``audit``, ``deny``, ``allow``; TCP: ``deny.<ns>.<name>``)."""

    label: str
    rules: rbac_pb2.RBAC


# --- conditions -> Envoy matchers -----------------------------------------------------------------


def _string(pattern: Pattern, prefix: str = "") -> string_pb2.StringMatcher:
    if pattern.kind == ANY:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if pattern.kind == EXACT:
        return string_pb2.StringMatcher(exact=prefix + pattern.text)
    if pattern.kind == PREFIX:
        return string_pb2.StringMatcher(prefix=prefix + pattern.text)
    return string_pb2.StringMatcher(suffix=pattern.text)


def _regex(regex: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def _header(name: str, value: str) -> Permission:
    pattern = Pattern.parse(value)
    if name == ":authority":
        return Permission(header=route_components_pb2.HeaderMatcher(name=name, string_match=_regex(host_regex(value))))
    if pattern.kind == ANY and name != ":method":
        return Permission(header=route_components_pb2.HeaderMatcher(name=name, present_match=True))
    return Permission(header=route_components_pb2.HeaderMatcher(name=name, string_match=_string(pattern)))


def _cidr(block: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(block, strict=False)
    return address_pb2.CidrRange(address_prefix=str(net.network_address),
                                 prefix_len=wrappers_pb2.UInt32Value(value=net.prefixlen))


def _authenticated(matcher: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


def _value_matcher(cond: Condition, value: str) -> Permission | Principal:
    a = cond.attribute
    if a == SOURCE_PRINCIPAL:
        return _authenticated(_string(Pattern.parse(value), prefix="spiffe://"))
    if a == SOURCE_NAMESPACE:
        return _authenticated(_regex(spiffe_namespace_regex(value)))
    if a == SOURCE_IP:
        return Principal(direct_remote_ip=_cidr(value))
    if a == REQUEST_METHOD:
        return _header(":method", value)
    if a == REQUEST_HOST:
        return _header(":authority", value)
    if a == REQUEST_PATH:
        return Permission(url_path=path_pb2.PathMatcher(path=_string(Pattern.parse(value))))
    if a == REQUEST_HEADERS:
        return _header(cond.header or "", value)
    raise ValueError(f"no Envoy matcher for attribute {a!r}")


def _any_of(items: list, cls) -> Message:
    if len(items) == 1:
        return items[0]
    if cls is Principal:
        return Principal(or_ids=Principal.Set(ids=items))
    return Permission(or_rules=Permission.Set(rules=items))


def _all_of(items: list, cls) -> Message:
    if not items:
        return cls(any=True)
    if len(items) == 1:
        return items[0]
    if cls is Principal:
        return Principal(and_ids=Principal.Set(ids=items))
    return Permission(and_rules=Permission.Set(rules=items))


def condition_matcher(cond: Condition, instance: ServiceInstance) -> _Matcher:
    """The Envoy matcher for one condition, or True/False when it is decided by the listener alone."""
    if cond.attribute == DESTINATION_PORT:
        hit = any(v.isdigit() and int(v) == instance.port for v in cond.values)
        return hit != cond.negated
    cls = Principal if cond.on_source else Permission
    matcher = _any_of([_value_matcher(cond, v) for v in cond.values], cls)
    if not cond.negated:
        return matcher
    return Principal(not_id=matcher) if cls is Principal else Permission(not_rule=matcher)


def _alternatives(blocks, extra: Sequence[Condition], cls, instance: ServiceInstance) -> list | None:
    """OR over ``blocks`` (None: one empty block) of AND over each block's conditions plus ``extra``.

    None when no alternative can match on this listener."""
    out = []
    for block in blocks if blocks is not None else [()]:
        parts = []
        for cond in tuple(block) + tuple(extra):
            m = condition_matcher(cond, instance)
            if m is False:
                break
            if m is not True:
                parts.append(m)
        else:
            out.append(_all_of(parts, cls))
    return out or None


def rule_policy(rule: Rule, instance: ServiceInstance) -> rbac_pb2.Policy | None:
    """One rule as an Envoy RBAC policy; None when it cannot match on ``instance``'s listener (ports)."""
    request_when = [c for c in rule.when if not c.on_source]
    source_when = [c for c in rule.when if c.on_source]
    permissions = _alternatives(rule.operations, request_when, Permission, instance)
    principals = _alternatives(rule.sources, source_when, Principal, instance)
    if permissions is None or principals is None:
        return None
    return rbac_pb2.Policy(permissions=permissions, principals=principals)


def _rbac(action: str, policies: Sequence[PolicyRules], instance: ServiceInstance) -> rbac_pb2.RBAC:
    rules = rbac_pb2.RBAC(action=_ENVOY_ACTION[action])
    for p in policies:
        for rule in p.rules:
            compiled = rule_policy(rule, instance)
            if compiled is not None:
                rules.policies[p.rule_id(rule)].CopyFrom(compiled)
    return rules


def rbac_stages(selected: Sequence[Resource], instance: ServiceInstance) -> list[RbacStage]:
    """The RBAC stages for ``instance``, in evaluation order (pure). ``selected``: the policies selecting it.

    Labels: ``audit``, ``deny`` (HTTP: every DENY policy in one stage) or ``deny.<ns>.<name>`` (TCP: one
    filter per DENY policy, the only way to count TCP denials per policy), and ``allow``."""
    compiled = [policy_rules(p, instance.protocol) for p in selected]
    compiled.sort(key=lambda p: (p.namespace, p.name))
    stages: list[RbacStage] = []
    audits = [p for p in compiled if p.action == AUDIT]
    if audits:
        stages.append(RbacStage("audit", _rbac(AUDIT, audits, instance)))
    denies = [p for p in compiled if p.action == DENY]
    if instance.protocol == "tcp":
        for p in denies:
            rules = _rbac(DENY, [p], instance)
            if rules.policies:  # a DENY filter without policies allows everything: leave it out
                stages.append(RbacStage(f"deny.{p.namespace}.{p.name}", rules))
    elif denies:
        rules = _rbac(DENY, denies, instance)
        if rules.policies:
            stages.append(RbacStage("deny", rules))
    allows = [p for p in compiled if p.action == ALLOW]
    if allows:
        stages.append(RbacStage("allow", _rbac(ALLOW, allows, instance)))
    return stages


# --- HTTP: the rules go into the inbound route configuration ---------------------------------------


def _stat(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")



def check_http_listener(listener: c.ListenerDraft) -> list[str]:
    """Problems that would leave rules sent over RDS unenforced: an HCM without the policy filters."""
    problems = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if isinstance(f.config, hcm_pb2.HttpConnectionManager) and not pf.has_policy_filters(f.config):
                problems.append(f"listener {listener.name!r} chain {chain.name!r}: the HttpConnectionManager lacks "
                                f"the policy filters {', '.join(pf.POLICY_FILTER_NAMES)} before its router")
    return problems


def secure_route(route: route_pb2.RouteConfiguration, stages: list[RbacStage]) -> None:
    """Put ``stages`` into an inbound route configuration as per-filter config of its virtual hosts."""
    for s in stages:
        stage = pf.STAGE_BY_LABEL.get(s.label)
        if stage is None:
            raise ValueError(f"route {route.name!r}: RBAC stage {s.label!r} has no HTTP filter (TCP only)")
        pf.set_policy_config(route, stage.filter_name, pf.rbac_per_route(stage, s.rules))


# --- TCP: network RBAC filters in the listener ----------------------------------------------------


def _insert_tcp(chain: c.ChainDraft, at: int, stages: list[RbacStage], stat_prefix: str) -> None:
    chain.filters[at:at] = [
        c.NetworkFilter(NETWORK_RBAC, network_rbac_pb2.RBAC(rules=s.rules, stat_prefix=f"tcp.{stat_prefix}.authz.{s.label}."))
        for s in stages
    ]


def secure_chain(chain: c.ChainDraft, stages: list[RbacStage], listener_name: str) -> None:
    """Insert ``stages`` into one inbound TCP filter chain, before its tcp_proxy."""
    where = f"listener {listener_name!r} chain {chain.name!r}"
    for i, f in enumerate(chain.filters):
        if isinstance(f.config, tcp_proxy_pb2.TcpProxy):
            _insert_tcp(chain, i, stages, _stat(listener_name))
            return
    raise ValueError(f"{where}: no tcp_proxy to enforce AuthorizationPolicy on")


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    policies = snapshot.resources_of(KIND)
    if not policies:
        return
    problems = []
    for inst, listener, route in inbound_targets(snapshot, proxy, resources):
        selected = policies_for(policies, inst.labels, inst.namespace)
        if not selected:
            continue
        stages = rbac_stages(selected, inst)
        try:
            if inst.protocol == "tcp":
                for chain in listener.filter_chains:
                    secure_chain(chain, stages, listener.name)
                continue
            if route is None:
                raise ValueError(f"no inbound route configuration {naming.inbound_route(inst.id)!r} to put the rules in")
            problems += [f"AuthorizationPolicy not enforceable: {p}" for p in check_http_listener(listener)]
            secure_route(route, stages)
        except ValueError as exc:
            problems.append(f"AuthorizationPolicy not enforceable: {exc}")
    if problems:
        # Fail closed: a proxy whose policies cannot be enforced keeps its last good config.
        raise SnapshotInvalid(proxy.node, problems)


__all__ = ["apply", "rbac_stages", "rule_policy", "condition_matcher", "secure_chain", "secure_route",
           "check_http_listener", "RbacStage", "HTTP_RBAC", "NETWORK_RBAC"]
