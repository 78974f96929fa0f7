"""AuthorizationPolicy: who may call a workload, and how (spelled and evaluated like Istio's).

```yaml
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: frontend-policy, namespace: default}
spec:
  selector: {matchLabels: {app: frontend}}        # optional
  action: ALLOW                                   # ALLOW (default) | DENY | AUDIT
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/backend"]   # no spiffe:// scheme, as in Istio
    to:
    - operation:
        methods: ["GET", "POST"]
    when:
    - key: request.headers[x-env]
      values: ["prod"]
```

Scope (the same as PeerAuthentication's): a policy in :data:`ROOT_NAMESPACE` without a selector
applies to the **whole mesh**; any other policy without a selector (or with an empty ``matchLabels``)
to every workload of **its namespace**; with a selector, to the workloads of its namespace whose labels
contain every ``matchLabels`` pair. :func:`selects` and :func:`policies_for` answer that question.

String values accept Istio's wildcards: exact, prefix (``/api/*``), suffix (``*.js``) or ``*`` (any,
present); a ``*`` anywhere else is an error. What a request must look like for a rule to match, and
how the policies combine, is :mod:`meshcore.authz`'s job.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable, Mapping, Sequence

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.model import Resource
from meshcore.resources.schema import (
    INVALID,
    Context,
    Custom,
    Enum,
    LabelSelector,
    ListOf,
    Obj,
    Path,
    Required,
    Schema,
    Str,
    suggest,
)

from meshcore.resources.kinds._fields import ROOT_NAMESPACE, TARGET_REF, in_scope

from .spec import (
    ACTIONS,
    ALLOW,
    AUDIT,
    DEFAULT_ACTION,
    DENY,
    HEADER_KEY,
    PLAIN_WHEN_KEYS,
    TOKEN,
    parse,
    parse_when_key,
    spec_of,
)

API_VERSION = "security.mesh.io/v1beta1"
KIND_NAME = "AuthorizationPolicy"

SOURCE_FIELDS = ("principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks")
OPERATION_FIELDS = ("methods", "notMethods", "paths", "notPaths", "ports", "notPorts", "hosts", "notHosts")
WHEN_KEYS = ("request.headers[<name>]", "source.principal", "source.namespace", "source.ip", "destination.port")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]_-]+")
_NAMESPACE = re.compile(r"[a-z0-9-]+")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


# --- value checks (each returns an error message or None) ----------------------------------------


def wildcard_problem(value: str) -> str | None:
    """Istio's rule: ``*`` alone, or one ``*`` as the first or the last character."""
    if value == "*":
        return None
    stars = value.count("*")
    if stars == 0:
        return None
    if stars > 1 or not (value.startswith("*") or value.endswith("*")):
        return (f"{json.dumps(value)}: '*' may only be the whole value (any), the first character (suffix match) "
                "or the last character (prefix match)")
    return None


def _literal(value: str) -> str:
    return value.strip("*")


def _principal_problem(value: str) -> str | None:
    if value.startswith("spiffe://"):
        return (f"write principals without the spiffe:// scheme, as in Istio: "
                f"{json.dumps(value[len('spiffe://'):])}")
    if any(c.isspace() for c in value):
        return f"{json.dumps(value)} must not contain whitespace"
    return wildcard_problem(value)


def _namespace_problem(value: str) -> str | None:
    """A namespace of the local trust domain (``default``, ``test-*``), or one qualified with its trust domain
    as a principal spells it (``other.example/ns/default``; ``*/ns/default``: in every trust domain)."""
    td, sep, ns = value.partition("/ns/")
    if sep:
        if td != "*" and not _TRUST_DOMAIN.fullmatch(td):
            return (f"{json.dumps(value)}: a qualified namespace is <trust domain>/ns/<namespace> "
                    "(e.g. \"other.example/ns/default\", or \"*/ns/default\" for every trust domain)")
        value = ns
    problem = wildcard_problem(value)
    if problem:
        return problem
    lit = _literal(value)
    if lit and not _NAMESPACE.fullmatch(lit):
        return f"{json.dumps(value)} is not a namespace: use lowercase letters, digits and '-' (and '*' wildcards)"
    return None


def _ip_block_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"must be an IP address or a CIDR block such as \"10.0.0.0/8\", got {json.dumps(value)}"
    return None


def _method_problem(value: str) -> str | None:
    problem = wildcard_problem(value)
    if problem:
        return problem
    lit = _literal(value)
    if lit and not TOKEN.fullmatch(lit):
        return f"{json.dumps(value)} is not an HTTP method"
    if lit != lit.upper():
        return f"HTTP methods are case-sensitive: write {json.dumps(value.upper())}, not {json.dumps(value)}"
    return None


def _path_problem(value: str) -> str | None:
    problem = wildcard_problem(value)
    if problem:
        return problem
    if "?" in value or "#" in value:
        return f"{json.dumps(value)}: paths are matched without the query string; remove the '?...' part"
    if not value.startswith("/") and not value.startswith("*"):
        return f"{json.dumps(value)} must start with '/' (exact or prefix match) or '*' (suffix match)"
    return None


def _host_problem(value: str) -> str | None:
    problem = wildcard_problem(value)
    if problem:
        return problem
    lit = _literal(value)
    if lit and not _HOST.fullmatch(lit):
        return f"{json.dumps(value)} is not a host name (optionally with :port)"
    return None


def _header_value_problem(value: str) -> str | None:
    return wildcard_problem(value)


def _port_problem(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return f"must be a port number 1-65535, got {json.dumps(value)}"
    return None


class PortString(Schema):
    """A port as Istio writes it (``"9080"``); an unquoted number is accepted and normalized to a string."""

    expected = "a port number"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        problem = _port_problem(value)
        if problem:
            ctx.add(path, problem)
            return INVALID
        return value


def _values(check) -> ListOf:
    return ListOf(Custom(Str(min_len=1), check))


PRINCIPALS = _values(_principal_problem)
NAMESPACES = _values(_namespace_problem)
IP_BLOCKS = _values(_ip_block_problem)
METHODS = _values(_method_problem)
PATHS = _values(_path_problem)
HOSTS = _values(_host_problem)
PORTS = ListOf(PortString())


def _needs_one_of(fields: Sequence[str], what: str):
    def rule(cleaned: dict, path: Path, ctx: Context) -> None:
        if not any(cleaned.get(f) for f in fields):
            ctx.add(path, f"{what} must set at least one of: {', '.join(fields)} "
                          f"(leave the whole {what} out to match any)")

    return rule


SOURCE = Obj(
    {
        "principals": PRINCIPALS,
        "notPrincipals": PRINCIPALS,
        "namespaces": NAMESPACES,
        "notNamespaces": NAMESPACES,
        "ipBlocks": IP_BLOCKS,
        "notIpBlocks": IP_BLOCKS,
    },
    rules=[_needs_one_of(SOURCE_FIELDS, "a source")],
    refused={
        **{f: ("request principals come from validated JWTs (RequestAuthentication), which meshcore does not have "
               "yet; authorize the calling workload by its mTLS identity with principals")
           for f in ("requestPrincipals", "notRequestPrincipals")},
        **{f: ("the original client address from X-Forwarded-For is not trusted on meshcore's inbound listeners; "
               "use ipBlocks (the peer's address)")
           for f in ("remoteIpBlocks", "notRemoteIpBlocks")},
    },
)

OPERATION = Obj(
    {
        "methods": METHODS,
        "notMethods": METHODS,
        "paths": PATHS,
        "notPaths": PATHS,
        "ports": PORTS,
        "notPorts": PORTS,
        "hosts": HOSTS,
        "notHosts": HOSTS,
    },
    rules=[_needs_one_of(OPERATION_FIELDS, "an operation")],
)


# --- when conditions -------------------------------------------------------------------------------


class WhenKey(Schema):
    expected = "a string"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if parse_when_key(value) is not None:
            return value
        if HEADER_KEY.fullmatch(value) or value.startswith("request.headers"):
            ctx.add(path, f"{json.dumps(value)}: write a header condition as request.headers[<name>], "
                          "e.g. request.headers[x-env]")
            return INVALID
        msg = f"unsupported key {json.dumps(value)}"
        hint = suggest(value, PLAIN_WHEN_KEYS)
        if hint:
            msg += f"; did you mean {json.dumps(hint)}?"
        ctx.add(path, msg + "; meshcore supports: " + ", ".join(WHEN_KEYS))
        return INVALID


_WHEN_VALUE_CHECKS = {
    "request.headers": _header_value_problem,
    "source.principal": _principal_problem,
    "source.namespace": _namespace_problem,
    "source.ip": _ip_block_problem,
    "destination.port": _port_problem,
}


def _when_values(cleaned: dict, path: Path, ctx: Context) -> None:
    if not cleaned.get("values") and not cleaned.get("notValues"):
        ctx.add(path, "a condition needs values or notValues (or both)")
        return
    parsed = parse_when_key(cleaned["key"])
    if parsed is None:  # already reported by WhenKey
        return
    check = _WHEN_VALUE_CHECKS[parsed[0]]
    for field in ("values", "notValues"):
        for i, value in enumerate(cleaned.get(field) or ()):
            problem = check(value)
            if problem:
                ctx.add(path.field(field).index(i), problem)


class _WhenValue(Schema):
    """Condition values are strings; numbers (ports) are accepted and normalized to strings."""

    expected = "a string"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return Str(min_len=1).check(value, path, ctx)


WHEN = Obj(
    {
        "key": Required(WhenKey()),
        "values": ListOf(_WhenValue()),
        "notValues": ListOf(_WhenValue()),
    },
    rules=[_when_values],
)

RULE = Obj(
    {
        "from": ListOf(Obj({"source": Required(SOURCE)})),
        "to": ListOf(Obj({"operation": Required(OPERATION)})),
        "when": ListOf(WHEN),
    }
)


class _Action(Enum):
    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if value == "CUSTOM":
            ctx.add(path, "CUSTOM (external authorization) is not supported by meshcore; use ALLOW, DENY or AUDIT")
            return INVALID
        return super().check(value, path, ctx)


SPEC = Obj(
    {
        "selector": LabelSelector(),
        "action": _Action(*ACTIONS),
        "rules": ListOf(RULE),
    },
    refused={"targetRef": TARGET_REF, "targetRefs": TARGET_REF,
             "provider": ("the external authorizer of a CUSTOM policy; CUSTOM (Envoy ext_authz) is not available in "
                          "meshcore yet: use ALLOW, DENY or AUDIT")},
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    parse=parse,
    summary="which callers (SPIFFE principals, namespaces, IPs) may do what (methods, paths, ports) on workloads",
)


# --- scope (pure) --------------------------------------------------------------------------------------


def action_of(policy: Resource) -> str:
    """The policy's action; omitted means ALLOW (as in Istio)."""
    return spec_of(policy).action


def selects(policy: Resource, labels: Mapping[str, str], namespace: str) -> bool:
    """Whether ``policy`` applies to a workload with ``labels`` in ``namespace`` (see the module docstring)."""
    return policy.kind == KIND_NAME and in_scope(spec_of(policy).match_labels, policy.namespace, labels, namespace)


DRY_RUN_ANNOTATIONS = ("mesh.io/dry-run", "istio.io/dry-run")
"""``"true"`` on either (meshcore's namespace or Istio's): the policy is evaluated and counted, never enforced."""


def is_dry_run(policy: Resource) -> bool:
    """Whether ``policy`` carries a dry-run annotation set to ``"true"`` (Envoy RBAC ``shadow_rules``)."""
    return any(policy.annotation(key) == "true" for key in DRY_RUN_ANNOTATIONS)


def policies_for(resources: Iterable[Resource], labels: Mapping[str, str], namespace: str) -> list[Resource]:
    """The AuthorizationPolicies that apply to a workload, ordered by (namespace, name).

    ``resources`` may hold other kinds; they are ignored. The order is the one Envoy evaluates
    DENY policies in, so the policy reported as deciding is the same in both.
    """
    chosen = [r for r in resources if selects(r, labels, namespace)]
    return sorted(chosen, key=lambda r: (r.namespace, r.name))


__all__ = [
    "DRY_RUN_ANNOTATIONS",
    "is_dry_run",
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "ROOT_NAMESPACE",
    "ALLOW",
    "DENY",
    "AUDIT",
    "ACTIONS",
    "DEFAULT_ACTION",
    "SOURCE_FIELDS",
    "OPERATION_FIELDS",
    "WHEN_KEYS",
    "action_of",
    "parse_when_key",
    "policies_for",
    "selects",
    "wildcard_problem",
]
