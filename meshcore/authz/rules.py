"""A policy's rules as plain conditions for one protocol: the one reading of a spec that the evaluator and Envoy share.

The conditions are AuthorizationPolicy's typed spec (:mod:`meshcore.policies.authorization_policy.spec`, re-exported
here). Each ``from[].source``, ``to[].operation`` and ``when[]`` entry becomes :class:`Condition` objects on
named attributes (``source.principal``, ``request.method``, ...). A rule matches when some source
matches (or there is no ``from``), some operation matches (or there is no ``to``) and every ``when``
condition matches; inside one source or operation every condition must match; a condition matches
when any of its values does (``not*`` fields and ``notValues``: when none does).

TCP workloads see no HTTP attributes. As in Istio, an ALLOW rule using one (methods, paths, hosts,
request headers, the request's JWT: ``requestPrincipals``, ``request.auth.*``) is dropped, and DENY and AUDIT
rules lose those conditions and keep the rest: either way the policy fails closed, denying more rather than
allowing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..policies.authorization_policy.spec import (
    DESTINATION_PORT,
    HTTP_ONLY,
    REQUEST_AUDIENCES,
    REQUEST_CLAIMS,
    REQUEST_HEADERS,
    REQUEST_HOST,
    REQUEST_METHOD,
    REQUEST_PATH,
    REQUEST_PRESENTER,
    REQUEST_PRINCIPAL,
    SOURCE_ATTRIBUTES,
    SOURCE_IP,
    REMOTE_IP,
    SOURCE_NAMESPACE,
    SOURCE_PRINCIPAL,
    ALLOW,
    Condition,
    Rule,
    parse_rule,
    spec_of,
)
from ..resources.model import Resource


@dataclass(frozen=True)
class PolicyRules:
    """One policy's rules as they apply to one protocol; ``dropped`` lists rule indexes left out for TCP."""

    namespace: str
    name: str
    action: str
    rules: tuple[Rule, ...]
    dropped: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rule_id(self, rule: Rule) -> str:
        """``ns/name[index]``: the RBAC policy name in Envoy, so stats and logs name the deciding rule."""
        return f"{self.key}[{rule.index}]"


def _for_tcp(rule: Rule, action: str) -> Rule | None:
    uses_http = any(c.http_only for c in rule.when) or any(
        c.http_only for block in (rule.operations or ()) + (rule.sources or ()) for c in block)
    if not uses_http:
        return rule
    if action == ALLOW:
        return None
    return Rule(
        index=rule.index,
        sources=None if rule.sources is None else tuple(
            tuple(c for c in src if not c.http_only) for src in rule.sources),
        operations=None if rule.operations is None else tuple(
            tuple(c for c in op if not c.http_only) for op in rule.operations),
        when=tuple(c for c in rule.when if not c.http_only),
    )


def policy_rules(policy: Resource, protocol: str = "http") -> PolicyRules:
    """``policy``'s rules for a workload speaking ``protocol`` (``http`` or ``tcp``); see the module docstring."""
    spec = spec_of(policy)
    action = spec.action
    rules = list(spec.rules)
    dropped: list[int] = []
    if protocol == "tcp":
        kept = []
        for rule in rules:
            tcp_rule = _for_tcp(rule, action)
            if tcp_rule is None:
                dropped.append(rule.index)
            else:
                kept.append(tcp_rule)
        rules = kept
    return PolicyRules(policy.namespace, policy.name, action, tuple(rules), tuple(dropped))


__all__ = [
    "Condition", "Rule", "PolicyRules", "parse_rule", "policy_rules", "HTTP_ONLY", "SOURCE_ATTRIBUTES",
    "SOURCE_PRINCIPAL", "SOURCE_NAMESPACE", "SOURCE_IP", "REQUEST_METHOD", "REQUEST_PATH", "REQUEST_HOST",
    "REQUEST_HEADERS", "DESTINATION_PORT", "REQUEST_PRINCIPAL", "REQUEST_AUDIENCES", "REQUEST_PRESENTER", "REQUEST_CLAIMS",
    "REMOTE_IP",
]
