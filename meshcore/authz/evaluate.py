"""Istio's authorization semantics as a pure function: which policies apply, which rule decides.

1. Any matching DENY rule denies (policies in (namespace, name) order, rules in index order).
2. Otherwise, when ALLOW policies select the workload, the request is allowed only if one of their
   rules matches (an ALLOW policy without rules therefore denies everything it selects).
3. Otherwise the request is allowed.

AUDIT policies are evaluated too, but only reported (:attr:`Decision.audit`). The Envoy RBAC filters
that :mod:`meshcore.policies.authorization_policy` compiles implement the same steps, from the same
:mod:`meshcore.authz.rules` reading of each policy.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping

from ..policies.authorization_policy.schema import ALLOW, AUDIT, DENY, policies_for
from ..resources.model import Resource
from .model import Decision, Request
from .patterns import ANY, Pattern, host_regex, normalize_path
from .rules import (
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


def _ip_in(ip: str | None, block: str) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False


def _value_matches(cond: Condition, value: str, request: Request) -> bool:
    a = cond.attribute
    if a == SOURCE_PRINCIPAL:
        return Pattern.parse(value).matches(request.principal)
    if a == SOURCE_NAMESPACE:
        return Pattern.parse(value).matches(request.source_namespace)
    if a == SOURCE_IP:
        return _ip_in(request.source_ip, value)
    if a == REQUEST_METHOD:
        return Pattern.parse(value).matches(request.method)
    if a == REQUEST_PATH:
        return Pattern.parse(value).matches(normalize_path(request.path))
    if a == REQUEST_HOST:
        return bool(request.host) and re.fullmatch(host_regex(value), request.host) is not None
    if a == DESTINATION_PORT:
        return value.isdigit() and int(value) == request.port
    if a == REQUEST_HEADERS:
        got = request.headers.get(cond.header or "")
        pattern = Pattern.parse(value)
        return got is not None if pattern.kind == ANY else pattern.matches(got)
    return False


def condition_matches(cond: Condition, request: Request) -> bool:
    hit = any(_value_matches(cond, v, request) for v in cond.values)
    return not hit if cond.negated else hit


def rule_matches(rule: Rule, request: Request) -> bool:
    def all_of(conds) -> bool:
        return all(condition_matches(c, request) for c in conds)

    return (
        (rule.sources is None or any(all_of(s) for s in rule.sources))
        and (rule.operations is None or any(all_of(o) for o in rule.operations))
        and all_of(rule.when)
    )


def _first_match(policies: list[PolicyRules], request: Request) -> tuple[PolicyRules, Rule] | None:
    for p in policies:
        for r in p.rules:
            if rule_matches(r, request):
                return p, r
    return None


def decide(
    policies: Iterable[Resource],
    workload_labels: Mapping[str, str],
    namespace: str,
    request: Request,
    *,
    workload: str | None = None,
) -> Decision:
    """Decide ``request`` to the workload with ``workload_labels`` in ``namespace``.

    ``policies`` may hold every resource of the mesh; only the AuthorizationPolicies selecting the
    workload count. ``workload`` names it in the reason (default: its ``app`` label).
    """
    name = workload or workload_labels.get("app") or "the workload"
    applicable = [policy_rules(p, request.protocol) for p in policies_for(policies, workload_labels, namespace)]
    by_action: dict[str, list[PolicyRules]] = {ALLOW: [], DENY: [], AUDIT: []}
    for p in applicable:
        by_action[p.action].append(p)
    audit = tuple(p.rule_id(r) for p in by_action[AUDIT] for r in p.rules if rule_matches(r, request))

    denied = _first_match(by_action[DENY], request)
    if denied:
        p, r = denied
        return Decision(False, DENY, p.key, r.index,
                        f"denied by DENY policy {p.key} rule {r.index}", audit)
    allows = by_action[ALLOW]
    if not allows:
        if not applicable:
            reason = f"no policy selects {name}: allowed"
        else:
            reason = f"no DENY rule matches and no ALLOW policy selects {name}: allowed"
        return Decision(True, None, None, None, reason, audit)
    allowed = _first_match(allows, request)
    if allowed:
        p, r = allowed
        return Decision(True, ALLOW, p.key, r.index, f"allowed by ALLOW policy {p.key} rule {r.index}", audit)
    names = ", ".join(p.key + (" (no rules)" if not p.rules else "") for p in allows)
    return Decision(False, ALLOW, None, None,
                    f"ALLOW policies select {name} ({names}) but none of their rules matches: denied", audit)


__all__ = ["decide", "rule_matches", "condition_matches"]
