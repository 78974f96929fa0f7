"""A policy's rules as plain conditions: the one reading of a spec that the evaluator and Envoy share.

Each ``from[].source``, ``to[].operation`` and ``when[]`` entry becomes :class:`Condition` objects on
named attributes (``source.principal``, ``request.method``, ...). A rule matches when some source
matches (or there is no ``from``), some operation matches (or there is no ``to``) and every ``when``
condition matches; inside one source or operation every condition must match; a condition matches
when any of its values does (``not*`` fields and ``notValues``: when none does).

TCP workloads see no HTTP attributes. As in Istio, an ALLOW rule using one (methods, paths, hosts,
request headers) is dropped, and DENY and AUDIT rules lose those conditions and keep the rest: either
way the policy fails closed, denying more rather than allowing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..resources.kinds.authorization_policy import ALLOW, action_of, parse_when_key
from ..resources.model import Resource

SOURCE_PRINCIPAL = "source.principal"
SOURCE_NAMESPACE = "source.namespace"
SOURCE_IP = "source.ip"
REQUEST_METHOD = "request.method"
REQUEST_PATH = "request.path"
REQUEST_HOST = "request.host"
REQUEST_HEADERS = "request.headers"
DESTINATION_PORT = "destination.port"

HTTP_ONLY = frozenset({REQUEST_METHOD, REQUEST_PATH, REQUEST_HOST, REQUEST_HEADERS})
SOURCE_ATTRIBUTES = frozenset({SOURCE_PRINCIPAL, SOURCE_NAMESPACE, SOURCE_IP})

# spec field -> (attribute, negated)
_SOURCE_FIELDS = {
    "principals": (SOURCE_PRINCIPAL, False), "notPrincipals": (SOURCE_PRINCIPAL, True),
    "namespaces": (SOURCE_NAMESPACE, False), "notNamespaces": (SOURCE_NAMESPACE, True),
    "ipBlocks": (SOURCE_IP, False), "notIpBlocks": (SOURCE_IP, True),
}
_OPERATION_FIELDS = {
    "methods": (REQUEST_METHOD, False), "notMethods": (REQUEST_METHOD, True),
    "paths": (REQUEST_PATH, False), "notPaths": (REQUEST_PATH, True),
    "ports": (DESTINATION_PORT, False), "notPorts": (DESTINATION_PORT, True),
    "hosts": (REQUEST_HOST, False), "notHosts": (REQUEST_HOST, True),
}


@dataclass(frozen=True)
class Condition:
    """``attribute`` (one of the constants above) matches any of ``values``; ``negated``: matches none."""

    attribute: str
    values: tuple[str, ...]
    negated: bool = False
    header: str | None = None  # lowercased header name, for request.headers

    @property
    def http_only(self) -> bool:
        return self.attribute in HTTP_ONLY

    @property
    def on_source(self) -> bool:
        """Conditions about the caller (Envoy: RBAC principals) rather than the request (permissions)."""
        return self.attribute in SOURCE_ATTRIBUTES

    def describe(self) -> str:
        name = f"request.headers[{self.header}]" if self.attribute == REQUEST_HEADERS else self.attribute
        return f"{name} {'not in' if self.negated else 'in'} [{', '.join(self.values)}]"


@dataclass(frozen=True)
class Rule:
    """One ``rules[index]`` entry. ``sources``/``operations`` None: the rule has no ``from``/``to`` (any)."""

    index: int
    sources: tuple[tuple[Condition, ...], ...] | None
    operations: tuple[tuple[Condition, ...], ...] | None
    when: tuple[Condition, ...]


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


def _conditions(block: dict, fields: dict) -> tuple[Condition, ...]:
    out = []
    for field, (attribute, negated) in fields.items():
        values = block.get(field) or ()
        if values:
            out.append(Condition(attribute, tuple(str(v) for v in values), negated))
    return tuple(out)


def _when(entries: list) -> tuple[Condition, ...]:
    out = []
    for entry in entries or ():
        parsed = parse_when_key(entry["key"])
        if parsed is None:  # validation rejects these; refuse rather than guess (ignoring it would widen a rule)
            raise ConfigError(f"AuthorizationPolicy condition key {entry['key']!r} is not supported")
        attribute, header = parsed
        for field, negated in (("values", False), ("notValues", True)):
            values = entry.get(field) or ()
            if values:
                out.append(Condition(attribute, tuple(str(v) for v in values), negated, header))
    return tuple(out)


def parse_rule(index: int, rule: dict) -> Rule:
    sources = rule.get("from") or None
    operations = rule.get("to") or None
    return Rule(
        index=index,
        sources=None if sources is None else tuple(_conditions(f["source"], _SOURCE_FIELDS) for f in sources),
        operations=None if operations is None else tuple(
            _conditions(t["operation"], _OPERATION_FIELDS) for t in operations),
        when=_when(rule.get("when") or []),
    )


def _for_tcp(rule: Rule, action: str) -> Rule | None:
    uses_http = any(c.http_only for c in rule.when) or any(
        c.http_only for op in (rule.operations or ()) for c in op)
    if not uses_http:
        return rule
    if action == ALLOW:
        return None
    return Rule(
        index=rule.index,
        sources=rule.sources,
        operations=None if rule.operations is None else tuple(
            tuple(c for c in op if not c.http_only) for op in rule.operations),
        when=tuple(c for c in rule.when if not c.http_only),
    )


def policy_rules(policy: Resource, protocol: str = "http") -> PolicyRules:
    """``policy``'s rules for a workload speaking ``protocol`` (``http`` or ``tcp``); see the module docstring."""
    action = action_of(policy)
    rules = [parse_rule(i, r) for i, r in enumerate((policy.spec or {}).get("rules") or [])]
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
    "REQUEST_HEADERS", "DESTINATION_PORT",
]
