"""AuthorizationPolicy's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into an :class:`AuthorizationPolicySpec`:
each ``from[].source``, ``to[].operation`` and ``when[]`` entry becomes :class:`Condition` objects on named
attributes (``source.principal``, ``request.method``, ...), an omitted ``action`` is ``ALLOW``. This is the one
reading of a policy that the evaluator (:mod:`meshcore.authz`) and the Envoy RBAC compiler (:mod:`.rbac`) share;
:func:`meshcore.authz.policy_rules` adapts it to a workload's protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.errors import ConfigError
from meshcore.resources.model import Resource

ALLOW, DENY, AUDIT = "ALLOW", "DENY", "AUDIT"
ACTIONS = (ALLOW, DENY, AUDIT)
DEFAULT_ACTION = ALLOW

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


PLAIN_WHEN_KEYS = (SOURCE_PRINCIPAL, SOURCE_NAMESPACE, SOURCE_IP, DESTINATION_PORT)
HEADER_KEY = re.compile(r"request\.headers\[(?P<name>[^\]]*)\]")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (header names, methods)


def parse_when_key(key: str) -> tuple[str, str | None] | None:
    """``"request.headers[X-Env]"`` -> ``("request.headers", "x-env")``; ``"source.ip"`` -> ``("source.ip", None)``.

    None when meshcore does not know the key. Header names are lowercased (HTTP/2 and Envoy spell them so).
    """
    m = HEADER_KEY.fullmatch(key)
    if m:
        name = m.group("name").strip()
        return ("request.headers", name.lower()) if name and TOKEN.fullmatch(name) else None
    return (key, None) if key in PLAIN_WHEN_KEYS else None


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
class AuthorizationPolicySpec:
    match_labels: tuple[tuple[str, str], ...] = ()  # empty: every workload of the namespace (or of the mesh)
    action: str = DEFAULT_ACTION
    rules: tuple[Rule, ...] = ()


def _conditions(block: Mapping[str, Any], fields: Mapping[str, tuple[str, bool]]) -> tuple[Condition, ...]:
    out = []
    for field, (attribute, negated) in fields.items():
        values = block.get(field) or ()
        if values:
            out.append(Condition(attribute, tuple(str(v) for v in values), negated))
    return tuple(out)


def _when(entries: Any) -> tuple[Condition, ...]:
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


def parse_rule(index: int, rule: Mapping[str, Any]) -> Rule:
    sources = rule.get("from") or None
    operations = rule.get("to") or None
    return Rule(
        index=index,
        sources=None if sources is None else tuple(_conditions(f["source"], _SOURCE_FIELDS) for f in sources),
        operations=None if operations is None else tuple(
            _conditions(t["operation"], _OPERATION_FIELDS) for t in operations),
        when=_when(rule.get("when") or []),
    )


def parse(spec: Mapping[str, Any]) -> AuthorizationPolicySpec:
    """The typed spec of an AuthorizationPolicy whose ``spec`` the schema accepted."""
    selector = spec.get("selector") or {}
    return AuthorizationPolicySpec(
        match_labels=tuple(sorted((selector.get("matchLabels") or {}).items())),
        action=spec.get("action") or DEFAULT_ACTION,
        rules=tuple(parse_rule(i, r) for i, r in enumerate(spec.get("rules") or ())),
    )


def spec_of(policy: Resource) -> AuthorizationPolicySpec:
    """The typed spec of an AuthorizationPolicy resource (parsed once, kept on the resource)."""
    typed: AuthorizationPolicySpec = policy.typed
    return typed


__all__ = [
    "AuthorizationPolicySpec", "Condition", "Rule", "ALLOW", "DENY", "AUDIT", "ACTIONS", "DEFAULT_ACTION",
    "HTTP_ONLY", "SOURCE_ATTRIBUTES", "SOURCE_PRINCIPAL", "SOURCE_NAMESPACE", "SOURCE_IP", "REQUEST_METHOD",
    "REQUEST_PATH", "REQUEST_HOST", "REQUEST_HEADERS", "DESTINATION_PORT", "parse", "parse_rule",
    "parse_when_key", "spec_of",
]
