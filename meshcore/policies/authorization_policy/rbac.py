"""AuthorizationPolicy -> Envoy RBAC (pure): each rule of the typed spec as an RBAC policy, and the stages
(audit, deny, allow) a workload's inbound side evaluates. :mod:`.plugin` puts them into the generated resources;
its docstring tells where and why.

Two readings differ from a literal translation of Istio's (docs/security.md, "Paths, hosts, headers and
namespaces as Envoy sees them"): a bare ``namespaces`` entry names a namespace of the mesh's own trust domain
(``other.example/ns/default`` another's, ``*/ns/default`` every one's), and ``request.headers`` values match a
comma-separated list by element in DENY and AUDIT rules (whole value in ALLOW; ``notValues`` the other way
round), so a list-valued header never gets a request past a policy. Paths and hosts reach RBAC normalized by
the HTTP connection manager (:func:`meshcore.xds.generate.listeners.normalize_requests`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence, TypeAlias

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from ...authz.patterns import (
    ANY,
    CONTAINS,
    EXACT,
    PREFIX,
    Pattern,
    header_element_regex,
    host_regex,
    is_path_template,
    path_template_envoy,
    spiffe_namespace_regex,
)
from ...authz.rules import PolicyRules, policy_rules
from ...catalog.model import ServiceInstance
from ...naming import DEFAULT_TRUST_DOMAIN
from ...resources.model import Resource
from ..request_authentication.jwt import JWT_METADATA_NS, PAYLOAD_KEY
from .schema import is_dry_run
from .spec import (
    ALLOW,
    AUDIT,
    CONNECTION_SNI,
    DENY,
    DESTINATION_IP,
    DESTINATION_PORT,
    REMOTE_IP,
    REQUEST_AUDIENCES,
    REQUEST_CLAIMS,
    REQUEST_HEADERS,
    REQUEST_HOST,
    REQUEST_METHOD,
    REQUEST_PATH,
    REQUEST_PRESENTER,
    REQUEST_PRINCIPAL,
    SOURCE_IP,
    SOURCE_NAMESPACE,
    SOURCE_PRINCIPAL,
    SOURCE_SERVICE_ACCOUNT,
    Condition,
    Rule,
    service_account_principal,
)

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
_ENVOY_ACTION = {ALLOW: rbac_pb2.RBAC.ALLOW, DENY: rbac_pb2.RBAC.DENY, AUDIT: rbac_pb2.RBAC.LOG}

Permission: TypeAlias = rbac_pb2.Permission
Principal: TypeAlias = rbac_pb2.Principal
_Matcher: TypeAlias = Permission | Principal | bool  # True/False: decided here (ports), nothing to send to Envoy


@dataclass(frozen=True)
class RbacStage:
    """One RBAC stage: ``label`` names it in stats (``audit``, ``deny``, ``allow``; TCP: ``deny.<ns>.<name>``)."""

    label: str
    rules: rbac_pb2.RBAC | None  # None: nothing enforced here (only dry-run policies of this stage)
    shadow: rbac_pb2.RBAC | None = None  # the dry-run policies: evaluated and counted, never enforced


# --- conditions -> Envoy matchers -----------------------------------------------------------------


def _string(pattern: Pattern, prefix: str = "") -> string_pb2.StringMatcher:
    if pattern.kind == ANY:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if pattern.kind == EXACT:
        return string_pb2.StringMatcher(exact=prefix + pattern.text)
    if pattern.kind == PREFIX:
        return string_pb2.StringMatcher(prefix=prefix + pattern.text)
    if pattern.kind == CONTAINS:  # request.headers only (validation)
        return string_pb2.StringMatcher(contains=pattern.text)
    return string_pb2.StringMatcher(suffix=pattern.text)


URI_TEMPLATE_MATCHER = "envoy.path.match.uri_template.uri_template_matcher"


def _uri_template(value: str) -> extension_pb2.TypedExtensionConfig:
    config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=path_template_envoy(value))
    packed = any_pb2.Any()
    packed.Pack(config)
    return extension_pb2.TypedExtensionConfig(name=URI_TEMPLATE_MATCHER, typed_config=packed)


def _regex(regex: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def _header(name: str, value: str, *, elements: bool = False) -> Permission:
    """``elements``: the value matches as the whole header value or as any element of a comma-separated list."""
    pattern = Pattern.parse(value)
    if name == ":authority":
        return Permission(header=route_components_pb2.HeaderMatcher(name=name, string_match=_regex(host_regex(value))))
    if pattern.kind == ANY and name != ":method":
        return Permission(header=route_components_pb2.HeaderMatcher(name=name, present_match=True))
    matcher = _regex(header_element_regex(value)) if elements else _string(pattern)
    return Permission(header=route_components_pb2.HeaderMatcher(name=name, string_match=matcher))


def _cidr(block: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(block, strict=False)
    return address_pb2.CidrRange(address_prefix=str(net.network_address),
                                 prefix_len=wrappers_pb2.UInt32Value(value=net.prefixlen))


def _authenticated(matcher: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


@dataclass(frozen=True)
class _Target:
    """What compiling a condition needs beyond it: the workload, the mesh's trust domain (bare ``namespaces``
    mean its namespaces only) and the action of the stage (DENY and AUDIT match list-valued headers by element)."""

    instance: ServiceInstance
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    action: str = ALLOW

    def header_elements(self, cond: Condition) -> bool:
        """Match ``cond``'s header values against each element of a list-valued header? Whichever way makes the
        rule match more often for DENY/AUDIT and less often for ALLOW: a list never helps past a policy."""
        return (self.action != ALLOW) != cond.negated


# --- the request's JWT (the payload RequestAuthentication's jwt_authn filter put into dynamic metadata) ---------

def _claim(path: Sequence[str], value: value_pb2.ValueMatcher) -> Principal:
    return Principal(metadata=metadata_pb2.MetadataMatcher(
        filter=JWT_METADATA_NS, path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (PAYLOAD_KEY, *path)],
        value=value))


def _claim_string(path: Sequence[str], matcher: string_pb2.StringMatcher) -> Principal:
    return _claim(path, value_pb2.ValueMatcher(string_match=matcher))


def claim_matcher(path: Sequence[str], value: str) -> Principal:
    """The claim at ``path`` matches ``value`` (Istio's exact/prefix/suffix/``*``): a string claim whole, a list
    claim (``groups``, ``aud``) when one of its elements does; ``*``: the claim is present."""
    pattern = Pattern.parse(value)
    if pattern.kind == ANY:
        return _claim(path, value_pb2.ValueMatcher(present_match=True))
    string = value_pb2.ValueMatcher(string_match=_string(pattern))
    return Principal(or_ids=Principal.Set(ids=[
        _claim(path, string),
        _claim(path, value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=string))),
    ]))


def _both(a: Principal, b: Principal) -> Principal:
    return Principal(and_ids=Principal.Set(ids=[a, b]))


def _present(claim: str) -> Principal:
    return _claim((claim,), value_pb2.ValueMatcher(present_match=True))


def _affix(claim: str, **kind: str) -> Principal:
    """The claim starts (``prefix=``) or ends (``suffix=``) with a text; an empty one: the claim is present."""
    return _claim_string((claim,), string_pb2.StringMatcher(**kind)) if next(iter(kind.values())) else _present(claim)


def _exact(claim: str, text: str) -> Principal:
    return _claim_string((claim,), string_pb2.StringMatcher(exact=text))


def request_principal_matcher(value: str) -> Principal:
    """``requestPrincipals`` values are ``<iss>/<sub>``, and both may hold ``/``: the value matches when *some*
    split of it at a ``/`` matches the claims, which is exactly Istio's match on the joined string."""
    pattern = Pattern.parse(value)
    if pattern.kind == ANY:
        return _both(_present("iss"), _present("sub"))
    text = pattern.text
    cuts = [i for i, ch in enumerate(text) if ch == "/"]
    if pattern.kind == EXACT:
        alternatives = [_both(_exact("iss", text[:i]), _exact("sub", text[i + 1:])) for i in cuts]
    elif pattern.kind == PREFIX:
        # "<iss>/<sub>" starts with text: iss starts with it (sub anything), or text = iss + "/" + a prefix of sub.
        alternatives = [_both(_affix("iss", prefix=text), _present("sub"))]
        alternatives += [_both(_exact("iss", text[:i]), _affix("sub", prefix=text[i + 1:])) for i in cuts]
    else:  # SUFFIX: sub ends with text (iss anything), or text = a suffix of iss + "/" + sub.
        alternatives = [_both(_present("iss"), _affix("sub", suffix=text))]
        alternatives += [_both(_affix("iss", suffix=text[:i]), _exact("sub", text[i + 1:])) for i in cuts]
    if not alternatives:  # an exact value without "/" names no <iss>/<sub>: never matches
        return Principal(not_id=Principal(any=True))
    return _any_of(alternatives, Principal)  # type: ignore[return-value]


def _value_matcher(cond: Condition, value: str, target: _Target) -> Permission | Principal:
    a = cond.attribute
    if a == REQUEST_PRINCIPAL:
        return request_principal_matcher(value)
    if a == REQUEST_AUDIENCES:
        return claim_matcher(("aud",), value)
    if a == REQUEST_PRESENTER:
        return claim_matcher(("azp",), value)
    if a == REQUEST_CLAIMS:
        return claim_matcher(cond.claim, value)
    if a == SOURCE_PRINCIPAL:
        return _authenticated(_string(Pattern.parse(value), prefix="spiffe://"))
    if a == SOURCE_NAMESPACE:
        return _authenticated(_regex(spiffe_namespace_regex(value, target.trust_domain)))
    if a == SOURCE_SERVICE_ACCOUNT:
        return _authenticated(string_pb2.StringMatcher(
            exact="spiffe://" + service_account_principal(value, target.trust_domain)))
    if a == SOURCE_IP:
        return Principal(direct_remote_ip=_cidr(value))
    if a == REMOTE_IP:  # ingress gateways only (gateway.py): the client's address as the gateway trusts XFF
        return Principal(remote_ip=_cidr(value))
    if a == REQUEST_METHOD:
        return _header(":method", value)
    if a == REQUEST_HOST:
        return _header(":authority", value)
    if a == REQUEST_PATH:
        if is_path_template(value):  # /api/{*}/items: Envoy's URI template matcher, as Istio compiles it
            return Permission(uri_template=_uri_template(value))
        matcher = _string(Pattern.parse(value))
        if cond.ignore_case and matcher.WhichOneof("match_pattern") != "safe_regex":  # (ignorePathCase)
            matcher.ignore_case = True
        return Permission(url_path=path_pb2.PathMatcher(path=matcher))
    if a == DESTINATION_IP:
        return Permission(destination_ip=_cidr(value))
    if a == CONNECTION_SNI:
        return Permission(requested_server_name=_string(Pattern.parse(value)))
    if a == REQUEST_HEADERS:
        return _header(cond.header or "", value, elements=target.header_elements(cond))
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


def condition_matcher(cond: Condition, instance: ServiceInstance, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                      action: str = ALLOW) -> _Matcher:
    """The Envoy matcher for one condition of an ``action`` rule, or True/False when the listener alone decides it."""
    if cond.attribute == DESTINATION_PORT:
        hit = any(v.isdigit() and int(v) == instance.port for v in cond.values)
        return hit != cond.negated
    target = _Target(instance, trust_domain, action)
    cls = Principal if cond.on_source else Permission
    matcher = _any_of([_value_matcher(cond, v, target) for v in cond.values], cls)
    if not cond.negated:
        return matcher
    return Principal(not_id=matcher) if cls is Principal else Permission(not_rule=matcher)


def _alternatives(blocks, extra: Sequence[Condition], cls, target: _Target) -> list | None:
    """OR over ``blocks`` (None: one empty block) of AND over each block's conditions plus ``extra``.

    None when no alternative can match on this listener."""
    out = []
    for block in blocks if blocks is not None else [()]:
        parts: list[Permission | Principal] = []
        for cond in tuple(block) + tuple(extra):
            m = condition_matcher(cond, target.instance, target.trust_domain, target.action)
            if m is False:
                break
            if m is not True:
                parts.append(m)
        else:
            out.append(_all_of(parts, cls))
    return out or None


def rule_policy(rule: Rule, instance: ServiceInstance, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                action: str = ALLOW) -> rbac_pb2.Policy | None:
    """One rule of an ``action`` policy as an Envoy RBAC policy; None when it cannot match on ``instance``'s
    listener (ports)."""
    target = _Target(instance, trust_domain, action)
    request_when = [c for c in rule.when if not c.on_source]
    source_when = [c for c in rule.when if c.on_source]
    permissions = _alternatives(rule.operations, request_when, Permission, target)
    principals = _alternatives(rule.sources, source_when, Principal, target)
    if permissions is None or principals is None:
        return None
    return rbac_pb2.Policy(permissions=permissions, principals=principals)


def _rbac(action: str, policies: Sequence[PolicyRules], instance: ServiceInstance, trust_domain: str) -> rbac_pb2.RBAC:
    rules = rbac_pb2.RBAC(action=_ENVOY_ACTION[action])
    for p in policies:
        for rule in p.rules:
            compiled = rule_policy(rule, instance, trust_domain, action)
            if compiled is not None:
                rules.policies[p.rule_id(rule)].CopyFrom(compiled)
    return rules


def rbac_stages(selected: Sequence[Resource], instance: ServiceInstance,
                trust_domain: str = DEFAULT_TRUST_DOMAIN) -> list[RbacStage]:
    """The RBAC stages for ``instance``, in evaluation order (pure). ``selected``: the policies selecting it;
    ``trust_domain``: the mesh's own (a bare ``namespaces`` entry means a namespace of it only).

    Labels: ``audit``, ``deny`` (HTTP: every DENY policy in one stage) or ``deny.<ns>.<name>`` (TCP: one
    filter per DENY policy, the only way to count TCP denials per policy), and ``allow``."""
    enforced = sorted((policy_rules(p, instance.protocol) for p in selected if not is_dry_run(p)),
                      key=lambda p: (p.namespace, p.name))
    dry = sorted((policy_rules(p, instance.protocol) for p in selected if is_dry_run(p)),
                 key=lambda p: (p.namespace, p.name))

    def of(policies: list[PolicyRules], action: str) -> list[PolicyRules]:
        return [p for p in policies if p.action == action]

    def shadow(action: str) -> rbac_pb2.RBAC | None:
        """Dry-run policies of ``action``, as Envoy's shadow rules (a DENY set without rules would count nothing)."""
        policies = of(dry, action)
        if not policies:
            return None
        rules = _rbac(action, policies, instance, trust_domain)
        return rules if rules.policies or action == ALLOW else None

    stages: list[RbacStage] = []
    audits, dry_audit = of(enforced, AUDIT), shadow(AUDIT)
    if audits or dry_audit:
        stages.append(RbacStage("audit", _rbac(AUDIT, audits, instance, trust_domain) if audits else None, dry_audit))
    denies, dry_deny = of(enforced, DENY), shadow(DENY)
    if instance.protocol == "tcp":
        for p in denies:
            rules = _rbac(DENY, [p], instance, trust_domain)
            if rules.policies:  # a DENY filter without policies allows everything: leave it out
                stages.append(RbacStage(f"deny.{p.namespace}.{p.name}", rules))
        if dry_deny is not None:
            stages.append(RbacStage("deny.dry_run", None, dry_deny))
    else:
        rules = _rbac(DENY, denies, instance, trust_domain) if denies else None
        rules = rules if rules is not None and rules.policies else None
        if rules is not None or dry_deny is not None:
            stages.append(RbacStage("deny", rules, dry_deny))
    allows, dry_allow = of(enforced, ALLOW), shadow(ALLOW)
    if allows or dry_allow:
        stages.append(RbacStage("allow", _rbac(ALLOW, allows, instance, trust_domain) if allows else None, dry_allow))
    return stages


__all__ = ["rbac_stages", "rule_policy", "condition_matcher", "RbacStage", "HTTP_RBAC", "NETWORK_RBAC",
           "claim_matcher", "request_principal_matcher"]
