"""Istio's authorization semantics as a pure function: which policies apply, which rule decides.

0. A matching CUSTOM rule sends the request to the policy's external authorizer first; the evaluator cannot know its
   answer, so it says so in the reason and decides the rest as if it allowed.
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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..naming import DEFAULT_TRUST_DOMAIN
from ..policies.authorization_policy.schema import ALLOW, AUDIT, CUSTOM, DENY, is_dry_run, policies_for
from ..resources.model import Resource
from .model import Decision, Request
from .patterns import (
    ANY,
    DEFAULT_PATH_NORMALIZATION,
    Pattern,
    header_element_regex,
    host_regex,
    namespace_matches,
    normalize_host,
    normalize_path,
    path_matches,
    path_rejection,
)
from .rules import (
    DESTINATION_PORT,
    REQUEST_AUDIENCES,
    REQUEST_CLAIMS,
    REQUEST_HEADERS,
    REQUEST_HOST,
    REQUEST_METHOD,
    REQUEST_PATH,
    REQUEST_PRESENTER,
    REQUEST_PRINCIPAL,
    SOURCE_IP,
    REMOTE_IP,
    SOURCE_NAMESPACE,
    SOURCE_PRINCIPAL,
    Condition,
    PolicyRules,
    Rule,
    policy_rules,
)
from ..policies.authorization_policy.spec import (
    CONNECTION_SNI,
    DESTINATION_IP,
    SOURCE_SERVICE_ACCOUNT,
    service_account_principal,
)

if TYPE_CHECKING:
    from ..snapshot import MeshSnapshot


def _ip_in(ip: str | None, block: str) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False


@dataclass(frozen=True)
class MeshContext:
    """What the inbound Envoys do before and around the policies, from the mesh settings: the trust domain
    (a bare ``namespaces`` entry means its namespaces only) and the path normalization."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    path_normalization: str = DEFAULT_PATH_NORMALIZATION
    allow_path_parameters: bool = False

    @classmethod
    def of(cls, snapshot: "MeshSnapshot") -> "MeshContext":
        """The context of a snapshot: its trust domain and mesh settings."""
        settings = snapshot.settings
        return cls(snapshot.trust_domain, settings.path_normalization, settings.allow_path_parameters)


_DEFAULT_CONTEXT = MeshContext()


def _claim(payload: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    node: Any = payload
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _claim_matches(payload: Mapping[str, Any] | None, path: Sequence[str], value: str) -> bool:
    """As the RBAC compiler: ``*`` a present claim; a string claim whole; a list claim by one of its strings."""
    got = _claim(payload, path)
    if got is None:
        return False
    pattern = Pattern.parse(value)
    if pattern.kind == ANY:
        return True
    if isinstance(got, str):
        return pattern.matches(got)
    if isinstance(got, list):
        return any(isinstance(v, str) and pattern.matches(v) for v in got)
    return False


def _request_principal(payload: Mapping[str, Any] | None) -> str | None:
    iss, sub = _claim(payload, ("iss",)), _claim(payload, ("sub",))
    return f"{iss}/{sub}" if isinstance(iss, str) and isinstance(sub, str) else None


def _value_matches(cond: Condition, value: str, request: Request, ctx: MeshContext, action: str) -> bool:
    a = cond.attribute
    if a == REQUEST_PRINCIPAL:
        return Pattern.parse(value).matches(_request_principal(request.jwt))
    if a == REQUEST_AUDIENCES:
        return _claim_matches(request.jwt, ("aud",), value)
    if a == REQUEST_PRESENTER:
        return _claim_matches(request.jwt, ("azp",), value)
    if a == REQUEST_CLAIMS:
        return _claim_matches(request.jwt, cond.claim, value)
    if a == SOURCE_PRINCIPAL:
        return Pattern.parse(value).matches(request.principal)
    if a == SOURCE_NAMESPACE:
        return namespace_matches(value, request.principal, request.source_namespace, ctx.trust_domain)
    if a == SOURCE_SERVICE_ACCOUNT:  # serviceAccounts: the caller's SPIFFE ID, exactly
        return request.principal == service_account_principal(value, ctx.trust_domain)
    if a == SOURCE_IP:
        return _ip_in(request.source_ip, value)
    if a == REMOTE_IP:  # the client as an ingress gateway trusts X-Forwarded-For; the peer when none is given
        return _ip_in(request.remote_ip or request.source_ip, value)
    if a == REQUEST_METHOD:
        return Pattern.parse(value).matches(request.method)
    if a == REQUEST_PATH:
        path = normalize_path(request.path, ctx.path_normalization)
        return path_matches(value.lower(), path.lower()) if cond.ignore_case else path_matches(value, path)
    if a == DESTINATION_IP:
        return _ip_in(request.destination_ip, value)
    if a == CONNECTION_SNI:
        return Pattern.parse(value).matches(request.sni)
    if a == REQUEST_HOST:
        return bool(request.host) and re.fullmatch(host_regex(value), normalize_host(request.host)) is not None
    if a == DESTINATION_PORT:
        return value.isdigit() and int(value) == request.port
    if a == REQUEST_HEADERS:
        got = request.headers.get(cond.header or "")
        pattern = Pattern.parse(value)
        if pattern.kind == ANY or got is None:
            return got is not None
        if (action != ALLOW) != cond.negated:  # as the RBAC compiler: a list never helps past a policy
            return re.fullmatch(header_element_regex(value), got) is not None
        return pattern.matches(got)
    return False


def condition_matches(cond: Condition, request: Request, ctx: MeshContext = _DEFAULT_CONTEXT,
                      action: str = ALLOW) -> bool:
    """Whether ``cond`` of an ``action`` rule holds for ``request``."""
    hit = any(_value_matches(cond, v, request, ctx, action) for v in cond.values)
    return not hit if cond.negated else hit


def rule_matches(rule: Rule, request: Request, ctx: MeshContext = _DEFAULT_CONTEXT, action: str = ALLOW) -> bool:
    def all_of(conds) -> bool:
        return all(condition_matches(c, request, ctx, action) for c in conds)

    return (
        (rule.sources is None or any(all_of(s) for s in rule.sources))
        and (rule.operations is None or any(all_of(o) for o in rule.operations))
        and all_of(rule.when)
    )


def _first_match(policies: list[PolicyRules], request: Request, ctx: MeshContext) -> tuple[PolicyRules, Rule] | None:
    for p in policies:
        for r in p.rules:
            if rule_matches(r, request, ctx, p.action):
                return p, r
    return None


#: What an inbound listener accepts as a caller (its TLS context matches the URI SAN against this): a workload
#: SVID of some trust domain; node, control plane and operator certificates of the mesh CA are refused.
_WORKLOAD_PRINCIPAL = re.compile(r"[^/]+/ns/[^/]+/sa/[^/]+")


def decide(
    policies: Iterable[Resource],
    workload_labels: Mapping[str, str],
    namespace: str,
    request: Request,
    *,
    workload: str | None = None,
    context: MeshContext | None = None,
) -> Decision:
    """Decide ``request`` to the workload with ``workload_labels`` in ``namespace``.

    ``policies`` may hold every resource of the mesh; only the AuthorizationPolicies selecting the
    workload count. ``workload`` names it in the reason (default: its ``app`` label). ``context``: the
    mesh's trust domain and path normalization (default: ``cluster.local`` and the default settings); a
    path the inbound side rejects with 400 (see :func:`~meshcore.authz.patterns.path_rejection`) is denied
    whatever the policies say.
    """
    ctx = context or _DEFAULT_CONTEXT
    if request.principal is not None and _WORKLOAD_PRINCIPAL.fullmatch(request.principal) is None:
        return Decision(False, None, None, None,
                        f"refused at the TLS handshake: {request.principal} is not a workload identity (inbound "
                        "listeners accept only spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")
    if request.protocol != "tcp":
        rejected = path_rejection(request.path, ctx.path_normalization, ctx.allow_path_parameters)
        if rejected:
            return Decision(False, None, None, None, rejected)
    name = workload or workload_labels.get("app") or "the workload"
    selected = policies_for(policies, workload_labels, namespace)
    dry = [policy_rules(p, request.protocol) for p in selected if is_dry_run(p)]
    applicable = [policy_rules(p, request.protocol) for p in selected if not is_dry_run(p)]
    verdict = _decide(applicable, name, request, ctx)
    if dry:
        shadow = _decide(dry, name, request, ctx)
        verdict = replace(verdict, dry_run=("would allow: " if shadow.allowed else "would deny: ") + shadow.reason)
    return verdict


def _decide(applicable: list[PolicyRules], name: str, request: Request, ctx: MeshContext) -> Decision:
    custom = _first_match([p for p in applicable if p.action == CUSTOM], request, ctx)
    verdict = _decide_enforced([p for p in applicable if p.action != CUSTOM], name, request, ctx)
    if custom is None:
        return verdict
    p, r = custom
    return replace(verdict, reason=(f"CUSTOM policy {p.key} rule {r.index} matches: the external authorizer decides "
                                    f"first (a denial there is final); if it allows: {verdict.reason}"))


def _decide_enforced(applicable: list[PolicyRules], name: str, request: Request, ctx: MeshContext) -> Decision:
    by_action: dict[str, list[PolicyRules]] = {ALLOW: [], DENY: [], AUDIT: []}
    for p in applicable:
        by_action[p.action].append(p)
    audit = tuple(p.rule_id(r) for p in by_action[AUDIT] for r in p.rules if rule_matches(r, request, ctx, AUDIT))

    denied = _first_match(by_action[DENY], request, ctx)
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
    allowed = _first_match(allows, request, ctx)
    if allowed:
        p, r = allowed
        return Decision(True, ALLOW, p.key, r.index, f"allowed by ALLOW policy {p.key} rule {r.index}", audit)
    names = ", ".join(p.key + (" (no rules)" if not p.rules else "") for p in allows)
    return Decision(False, ALLOW, None, None,
                    f"ALLOW policies select {name} ({names}) but none of their rules matches: denied", audit)


__all__ = ["MeshContext", "decide", "rule_matches", "condition_matches"]
