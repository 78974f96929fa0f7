"""Authorization: Istio's AuthorizationPolicy semantics as pure functions.

Public API::

    decide(policies, workload_labels, namespace, request, *, workload=None, context=None) -> Decision
    Request(principal, source_ip, method, path, host, port, headers, source_namespace, protocol)
    Decision(allowed, action, policy, rule_index, reason, audit)
    policy_rules(policy, protocol) -> PolicyRules          # a policy's rules as conditions (shared with Envoy)
    rule_matches(rule, request) -> bool
    check(snapshot, CheckQuery(destination, source, method, path, ...)) -> dict   # meshctl authz check

``meshctl authz check`` reports :func:`decide`; the Envoy RBAC filters built by
:mod:`meshcore.policies.authorization_policy` enforce the same :func:`policy_rules`.
"""

from .check import CheckQuery, check
from .evaluate import MeshContext, condition_matches, decide, rule_matches
from .model import Decision, Request
from .patterns import Pattern, host_regex, namespace_of_principal, normalize_path, spiffe_namespace_regex
from .rules import Condition, PolicyRules, Rule, policy_rules

__all__ = [
    "CheckQuery",
    "check",
    "Condition",
    "Decision",
    "MeshContext",
    "Pattern",
    "PolicyRules",
    "Request",
    "Rule",
    "condition_matches",
    "decide",
    "host_regex",
    "namespace_of_principal",
    "normalize_path",
    "policy_rules",
    "rule_matches",
    "spiffe_namespace_regex",
]
