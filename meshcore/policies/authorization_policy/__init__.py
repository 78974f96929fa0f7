"""AuthorizationPolicy, one folder as Kuma keeps a policy: schema, validation and scope (:mod:`.schema`), the typed
spec validation's output parses into (:mod:`.spec`: conditions the evaluator in :mod:`meshcore.authz` reads too),
the plugin (:mod:`.plugin`), its Envoy RBAC compiler (:mod:`.rbac`) and its golden data (``testdata/``).

Wildcard patterns and the evaluator stay in :mod:`meshcore.authz` (RateLimit and ``meshctl authz`` share them).
The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import apply
    from .rbac import RbacStage, rbac_stages
    from .schema import KIND, KIND_NAME, policies_for, selects
    from .spec import AuthorizationPolicySpec, Condition, Rule, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "RbacStage": ".rbac", "rbac_stages": ".rbac", "KIND": ".schema", "KIND_NAME": ".schema",
    "policies_for": ".schema", "selects": ".schema", "AuthorizationPolicySpec": ".spec", "Condition": ".spec",
    "Rule": ".spec", "parse": ".spec",
})

__all__ = ["apply", "RbacStage", "rbac_stages", "KIND", "KIND_NAME", "policies_for", "selects",
           "AuthorizationPolicySpec", "Condition", "Rule", "parse"]
