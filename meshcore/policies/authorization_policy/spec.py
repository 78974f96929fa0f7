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

ALLOW, DENY, AUDIT, CUSTOM = "ALLOW", "DENY", "AUDIT", "CUSTOM"
ACTIONS = (ALLOW, DENY, AUDIT, CUSTOM)
DEFAULT_ACTION = ALLOW

SOURCE_PRINCIPAL = "source.principal"
SOURCE_NAMESPACE = "source.namespace"
SOURCE_IP = "source.ip"
SOURCE_SERVICE_ACCOUNT = "source.serviceAccount"
"""Istio's ``serviceAccounts``: ``<ns>/<sa>`` (the mesh's own trust domain) or ``<td>/ns/<ns>/sa/<sa>``
(qualified by the source's ``trustDomains``); see :func:`service_account_principal`."""
REMOTE_IP = "remote.ip"  # the original client (X-Forwarded-For as the gateway trusts it): ingress gateways only
REQUEST_METHOD = "request.method"
REQUEST_PATH = "request.path"
REQUEST_HOST = "request.host"
REQUEST_HEADERS = "request.headers"
DESTINATION_PORT = "destination.port"
DESTINATION_IP = "destination.ip"  # the address the caller connected to (the workload's listener address)
CONNECTION_SNI = "connection.sni"  # the server name the caller's TLS handshake asked for
# From the request's validated JWT (RequestAuthentication): "<iss>/<sub>", the "aud", "azp" and any claim.
REQUEST_PRINCIPAL = "request.auth.principal"
REQUEST_AUDIENCES = "request.auth.audiences"
REQUEST_PRESENTER = "request.auth.presenter"
REQUEST_CLAIMS = "request.auth.claims"
REQUEST_AUTH = frozenset({REQUEST_PRINCIPAL, REQUEST_AUDIENCES, REQUEST_PRESENTER, REQUEST_CLAIMS})

HTTP_ONLY = frozenset({REQUEST_METHOD, REQUEST_PATH, REQUEST_HOST, REQUEST_HEADERS}) | REQUEST_AUTH
SOURCE_ATTRIBUTES = (frozenset({SOURCE_PRINCIPAL, SOURCE_NAMESPACE, SOURCE_IP, SOURCE_SERVICE_ACCOUNT, REMOTE_IP})
                     | REQUEST_AUTH)

# spec field -> (attribute, negated)
_SOURCE_FIELDS = {
    "principals": (SOURCE_PRINCIPAL, False), "notPrincipals": (SOURCE_PRINCIPAL, True),
    "namespaces": (SOURCE_NAMESPACE, False), "notNamespaces": (SOURCE_NAMESPACE, True),
    "ipBlocks": (SOURCE_IP, False), "notIpBlocks": (SOURCE_IP, True),
    "requestPrincipals": (REQUEST_PRINCIPAL, False), "notRequestPrincipals": (REQUEST_PRINCIPAL, True),
    "remoteIpBlocks": (REMOTE_IP, False), "notRemoteIpBlocks": (REMOTE_IP, True),
}
_OPERATION_FIELDS = {
    "methods": (REQUEST_METHOD, False), "notMethods": (REQUEST_METHOD, True),
    "paths": (REQUEST_PATH, False), "notPaths": (REQUEST_PATH, True),
    "ports": (DESTINATION_PORT, False), "notPorts": (DESTINATION_PORT, True),
    "hosts": (REQUEST_HOST, False), "notHosts": (REQUEST_HOST, True),
}


PLAIN_WHEN_KEYS = (SOURCE_PRINCIPAL, SOURCE_NAMESPACE, SOURCE_IP, DESTINATION_PORT, DESTINATION_IP, CONNECTION_SNI,
                   REQUEST_PRINCIPAL, REQUEST_AUDIENCES, REQUEST_PRESENTER, REMOTE_IP)
HEADER_KEY = re.compile(r"request\.headers\[(?P<name>[^\]]*)\]")
CLAIM_KEY = re.compile(r"request\.auth\.claims(?P<path>(\[[^\[\]]+\])+)")
"""``request.auth.claims[groups]``; a nested claim is one bracket per level: ``request.auth.claims[realm][role]``."""
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (header names, methods)


def parse_when_key(key: str) -> tuple[str, str | None] | None:
    """``"request.headers[X-Env]"`` -> ``("request.headers", "x-env")``; ``"source.ip"`` -> ``("source.ip", None)``.

    None when meshcore does not know the key. Header names are lowercased (HTTP/2 and Envoy spell them so).
    A claim key gives ``("request.auth.claims", None)``; :func:`claim_path` reads its path.
    """
    if claim_path(key):
        return (REQUEST_CLAIMS, None)
    m = HEADER_KEY.fullmatch(key)
    if m:
        name = m.group("name").strip()
        return ("request.headers", name.lower()) if name and TOKEN.fullmatch(name) else None
    return (key, None) if key in PLAIN_WHEN_KEYS else None


def claim_path(key: str) -> tuple[str, ...]:
    """``"request.auth.claims[realm][role]"`` -> ``("realm", "role")``; ``()`` for any other key."""
    m = CLAIM_KEY.fullmatch(key)
    if not m:
        return ()
    return tuple(part.strip() for part in m.group("path")[1:-1].split("]["))


@dataclass(frozen=True)
class Condition:
    """``attribute`` (one of the constants above) matches any of ``values``; ``negated``: matches none."""

    attribute: str
    values: tuple[str, ...]
    negated: bool = False
    header: str | None = None  # lowercased header name, for request.headers
    claim: tuple[str, ...] = ()  # the claim's path in the JWT payload, for request.auth.claims
    ignore_case: bool = False  # request.path of an operation with ignorePathCase: true

    @property
    def http_only(self) -> bool:
        return self.attribute in HTTP_ONLY

    @property
    def on_source(self) -> bool:
        """Conditions about the caller (Envoy: RBAC principals) rather than the request (permissions)."""
        return self.attribute in SOURCE_ATTRIBUTES

    def describe(self) -> str:
        name = f"request.headers[{self.header}]" if self.attribute == REQUEST_HEADERS else self.attribute
        if self.attribute == REQUEST_CLAIMS:
            name = REQUEST_CLAIMS + "".join(f"[{part}]" for part in self.claim)
        return (f"{name} {'not in' if self.negated else 'in'} [{', '.join(self.values)}]"
                + (" (ignoring case)" if self.ignore_case else ""))


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
    provider: str | None = None  # CUSTOM: the external authorizer's name (mesh settings' extensionProviders)


def service_account_principal(value: str, trust_domain: str) -> str:
    """A :data:`SOURCE_SERVICE_ACCOUNT` value as the principal (SPIFFE ID without the scheme) it names:
    ``default/sleep`` -> ``<trust_domain>/ns/default/sa/sleep``; a qualified value is already one."""
    if "/ns/" in value:
        return value
    namespace, _, account = value.partition("/")
    return f"{trust_domain}/ns/{namespace}/sa/{account}"


def _identity_conditions(block: Mapping[str, Any]) -> tuple[Condition, ...]:
    """Istio's ``serviceAccounts`` / ``trustDomains`` (and their ``not`` forms) as conditions on the caller's
    SPIFFE ID. ``trustDomains`` is a principal prefix (``<td>/*``: a trust domain holds no ``/``); a service
    account names one of the source's ``trustDomains`` when it lists some, else of the mesh's own (as a bare
    ``namespaces`` entry does: a federated domain cannot mint a local account's identity)."""
    domains = [str(v) for v in block.get("trustDomains") or ()]
    out = []
    for field, negated in (("trustDomains", False), ("notTrustDomains", True)):
        values = block.get(field) or ()
        if values:
            out.append(Condition(SOURCE_PRINCIPAL, tuple(f"{v}/*" for v in values), negated))
    for field, negated in (("serviceAccounts", False), ("notServiceAccounts", True)):
        values = [str(v) for v in block.get(field) or ()]
        if values:
            qualified = [service_account_principal(v, td) for td in domains for v in values]
            out.append(Condition(SOURCE_SERVICE_ACCOUNT, tuple(qualified or values), negated))
    return tuple(out)


def _conditions(block: Mapping[str, Any], fields: Mapping[str, tuple[str, bool]]) -> tuple[Condition, ...]:
    out = []
    for field, (attribute, negated) in fields.items():
        values = block.get(field) or ()
        if values:
            out.append(Condition(attribute, tuple(str(v) for v in values), negated,
                                 ignore_case=attribute == REQUEST_PATH and bool(block.get("ignorePathCase"))))
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
                out.append(Condition(attribute, tuple(str(v) for v in values), negated, header,
                                     claim_path(entry["key"])))
    return tuple(out)


def parse_rule(index: int, rule: Mapping[str, Any]) -> Rule:
    sources = rule.get("from") or None
    operations = rule.get("to") or None
    return Rule(
        index=index,
        sources=None if sources is None else tuple(
            _conditions(f["source"], _SOURCE_FIELDS) + _identity_conditions(f["source"]) for f in sources),
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
        provider=(spec.get("provider") or {}).get("name"),
    )


def spec_of(policy: Resource) -> AuthorizationPolicySpec:
    """The typed spec of an AuthorizationPolicy resource (parsed once, kept on the resource)."""
    typed: AuthorizationPolicySpec = policy.typed
    return typed


__all__ = [
    "AuthorizationPolicySpec", "Condition", "Rule", "ALLOW", "DENY", "AUDIT", "CUSTOM", "ACTIONS", "DEFAULT_ACTION",
    "HTTP_ONLY", "SOURCE_ATTRIBUTES", "SOURCE_PRINCIPAL", "SOURCE_NAMESPACE", "SOURCE_IP", "REQUEST_METHOD",
    "REQUEST_PATH", "REQUEST_HOST", "REQUEST_HEADERS", "DESTINATION_PORT", "parse", "parse_rule",
    "parse_when_key", "spec_of", "REQUEST_PRINCIPAL", "REQUEST_AUDIENCES", "REQUEST_PRESENTER", "REQUEST_CLAIMS",
    "REQUEST_AUTH", "CLAIM_KEY", "claim_path", "SOURCE_SERVICE_ACCOUNT", "service_account_principal", "REMOTE_IP",
]
