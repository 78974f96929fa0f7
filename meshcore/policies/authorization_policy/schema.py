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
    Bool,
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
    CUSTOM,
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

SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                 "notNamespaces", "ipBlocks", "notIpBlocks", "serviceAccounts", "notServiceAccounts", "trustDomains",
                 "notTrustDomains", "remoteIpBlocks", "notRemoteIpBlocks")
OPERATION_FIELDS = ("methods", "notMethods", "paths", "notPaths", "ports", "notPorts", "hosts", "notHosts")
WHEN_KEYS = ("request.headers[<name>]", "source.principal", "source.namespace", "source.ip", "remote.ip", "destination.port",
             "destination.ip", "connection.sni", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "request.auth.claims[<name>]")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]_-]+")
_NAMESPACE = re.compile(r"[a-z0-9-]+")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


# --- value checks (each returns an error message or None) ----------------------------------------


def wildcard_problem(value: str) -> str | None:
    """Istio's rule: ``*`` alone, or one ``*`` as the first or the last character. Istio's experimental ``regex:``
    prefix (off unless istiod runs with a feature flag) is refused rather than matched as literal text."""
    if value.startswith("regex:"):
        return (f"{json.dumps(value)}: the 'regex:' prefix (Istio's experimental, off-by-default regular expression "
                "match) is not supported; write an exact value, a 'prefix*' or a '*suffix'")
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


def _request_principal_problem(value: str) -> str | None:
    """``<iss>/<sub>`` of a JWT RequestAuthentication validated (``*``: any valid token), Istio's wildcards."""
    problem = wildcard_problem(value)
    if problem:
        return problem
    if value != "*" and "/" not in value and "*" not in value:
        return (f"{json.dumps(value)}: a request principal is <issuer>/<subject> of a validated JWT "
                "(e.g. \"https://issuer.example/alice\"), or \"*\" for any valid token")
    return None


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


_ACCOUNT = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
MAX_SERVICE_ACCOUNTS = 16  # Istio's maxItems (and 320 characters an entry)


def _service_account_problem(value: str) -> str | None:
    """Istio's ``<namespace>/<service account>``, exact (no wildcards); the account as meshcore issues it (a
    Consul service's ``service-account`` meta, else the service name)."""
    namespace, sep, account = value.partition("/")
    if "*" in value:
        return (f"{json.dumps(value)}: service accounts match exactly (no '*'); for every account of a namespace "
                "use namespaces in another source")
    if not sep or not namespace or not account:
        return (f"{json.dumps(value)}: write <namespace>/<service account>, e.g. \"default/productpage\" (a "
                "principal with a trust domain goes in principals)")
    if len(value) > 320:
        return f"{json.dumps(value[:40])}...: at most 320 characters (Istio's limit)"
    if not _NAMESPACE.fullmatch(namespace):
        return f"{json.dumps(value)}: {json.dumps(namespace)} is not a namespace (lowercase letters, digits and '-')"
    if not _ACCOUNT.fullmatch(account):
        return (f"{json.dumps(value)}: {json.dumps(account)} is not a service account name (lowercase letters, "
                "digits, '-' and '.')")
    return None


def _trust_domain_problem(value: str) -> str | None:
    if _TRUST_DOMAIN.fullmatch(value):
        return None
    return (f"{json.dumps(value)} is not a trust domain: a lowercase DNS-style name such as \"cluster.local\" "
            "(exactly, no '*' and no spiffe://)")


def _accounts_alone(cleaned: dict, path: Path, ctx: Context) -> None:
    """Istio's rule: serviceAccounts (or notServiceAccounts) are not set with principals or namespaces."""
    accounts = [f for f in ("serviceAccounts", "notServiceAccounts") if cleaned.get(f)]
    others = [f for f in ("principals", "notPrincipals", "namespaces", "notNamespaces") if cleaned.get(f)]
    if accounts and others:
        ctx.add(path.field(accounts[0]), f"cannot be set with {' or '.join(others)} in one source (Istio's rule): "
                                         "write the other condition in a second source of from[]")
    for field in accounts:
        if len(cleaned[field]) > MAX_SERVICE_ACCOUNTS:
            ctx.add(path.field(field), f"at most {MAX_SERVICE_ACCOUNTS} entries (Istio's limit), got "
                                       f"{len(cleaned[field])}; split them over several sources")


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
    from meshcore.authz.patterns import is_path_template, path_template_problem  # (meshcore.authz imports this)

    if is_path_template(value):  # /api/{*}/items, /static/{**}: an Envoy URI template, as in Istio
        return path_template_problem(value)
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
    """A header value may also be ``*text*``: the value contains ``text`` (Istio's request-headers test uses it)."""
    if len(value) > 2 and value.startswith("*") and value.endswith("*") and "*" not in value[1:-1]:
        return None
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
REQUEST_PRINCIPALS = _values(_request_principal_problem)
NAMESPACES = _values(_namespace_problem)
IP_BLOCKS = _values(_ip_block_problem)
SERVICE_ACCOUNTS = _values(_service_account_problem)
TRUST_DOMAINS = _values(_trust_domain_problem)
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
        "requestPrincipals": REQUEST_PRINCIPALS,
        "notRequestPrincipals": REQUEST_PRINCIPALS,
        "namespaces": NAMESPACES,
        "notNamespaces": NAMESPACES,
        "ipBlocks": IP_BLOCKS,
        "notIpBlocks": IP_BLOCKS,
        "serviceAccounts": SERVICE_ACCOUNTS,
        "notServiceAccounts": SERVICE_ACCOUNTS,
        "trustDomains": TRUST_DOMAINS,
        "notTrustDomains": TRUST_DOMAINS,
        # The client's address as an ingress gateway trusts X-Forwarded-For; refused on sidecars (gateway.py).
        "remoteIpBlocks": IP_BLOCKS,
        "notRemoteIpBlocks": IP_BLOCKS,
    },
    rules=[_needs_one_of(SOURCE_FIELDS, "a source"), _accounts_alone],
)

def _ignore_path_case_rule(cleaned: dict, path: Path, ctx: Context) -> None:
    from meshcore.authz.patterns import is_path_template  # (meshcore.authz imports this module)

    if not cleaned.get("ignorePathCase"):
        return
    if not cleaned.get("paths") and not cleaned.get("notPaths"):
        ctx.add(path.field("ignorePathCase"), "applies to paths and notPaths: set one of them, or leave it out")
    for field in ("paths", "notPaths"):
        for i, value in enumerate(cleaned.get(field) or ()):
            if is_path_template(value):
                ctx.add(path.field(field).index(i), f"{json.dumps(value)}: a path template is matched as written "
                                                    "(Envoy's URI template matcher has no case option); drop "
                                                    "ignorePathCase or write the path without {*} / {**}")


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
        "ignorePathCase": Bool(),  # paths and notPaths matched ignoring case (Istio's newer field)
    },
    rules=[_needs_one_of(OPERATION_FIELDS, "an operation"), _ignore_path_case_rule],
)


# --- when conditions -------------------------------------------------------------------------------


class WhenKey(Schema):
    expected = "a string"

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if not isinstance(value, str):
            return self._wrong_type(value, path, ctx)
        if parse_when_key(value) is not None:
            return value
        if value.startswith("request.auth.claim"):
            ctx.add(path, f"{json.dumps(value)}: write a claim condition as request.auth.claims[<name>] (nested: "
                          "request.auth.claims[<name>][<name>]), e.g. request.auth.claims[groups]")
            return INVALID
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
    "remote.ip": _ip_block_problem,
    "destination.port": _port_problem,
    "destination.ip": _ip_block_problem,
    "connection.sni": wildcard_problem,
    "request.auth.principal": _request_principal_problem,
    "request.auth.audiences": wildcard_problem,
    "request.auth.presenter": wildcard_problem,
    "request.auth.claims": wildcard_problem,
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


def _custom_needs_provider(spec: dict, path: Path, ctx: Context) -> None:
    custom = spec.get("action") == CUSTOM
    if custom and not spec.get("provider"):
        ctx.add(path.field("provider"), "a CUSTOM policy names its external authorizer: provider: {name: <one of the "
                                        "mesh config's extensionProviders>}")
    if spec.get("provider") and not custom:
        ctx.add(path.field("provider"), "provider belongs to action: CUSTOM (the external authorizer it delegates to)")


SPEC = Obj(
    {
        "selector": LabelSelector(),
        "action": Enum(*ACTIONS),
        "rules": ListOf(RULE),
        "provider": Obj({"name": Required(Str(min_len=1))}),
    },
    rules=[_custom_needs_provider],
    refused={"targetRef": TARGET_REF, "targetRefs": TARGET_REF},
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
