"""Compiled intentions decide every request as Consul does.

A small reference evaluator written from Consul's documentation (sources by precedence, first match
terminal; permissions in order, first match terminal; the default policy otherwise) is compared with
meshcore's own evaluator (:func:`meshcore.authz.decide`, the reading the RBAC plugin compiles) over a grid
of callers and requests, for both defaults.
"""

from __future__ import annotations

import itertools

import pytest

from meshcore.authz import decide
from meshcore.authz.model import Request
from meshcore.consul_entries import CatalogFacts, CompileOptions, compile_entries, entry_of, precedence

SERVICES = ("web", "api", "db", "admin", "batch")


def _entries(*bodies):
    return [entry_of(b, "test") for b in bodies]


def _http_matches(http: dict, method: str, path: str, headers: dict) -> bool:
    if "PathExact" in http and path != http["PathExact"]:
        return False
    if "PathPrefix" in http and not path.startswith(http["PathPrefix"]):
        return False
    if "Methods" in http and method not in http["Methods"]:
        return False
    for h in http.get("Header", ()):
        value = headers.get(h["Name"].lower())
        if "Exact" in h:
            ok = value == h["Exact"]
        elif "Prefix" in h:
            ok = value is not None and value.startswith(h["Prefix"])
        elif "Suffix" in h:
            ok = value is not None and value.endswith(h["Suffix"])
        else:
            ok = value is not None
        if h.get("Invert"):
            ok = not ok
        if not ok:
            return False
    return True


def consul_decides(entries, default: str, caller: str, dest: str, method: str, path: str, headers: dict) -> bool:
    """Consul's documented evaluation (the reference the compiled policies are checked against)."""
    candidates = []
    for e in entries:
        if e["Name"] not in (dest, "*"):
            continue
        for src in e["Sources"]:
            if src["Name"] in (caller, "*"):
                candidates.append((precedence(src["Name"], "default", e["Name"], "default"), src))
    if not candidates:
        return default == "allow"
    _, src = max(candidates, key=lambda c: c[0])
    if "Action" in src:
        return src["Action"] == "allow"
    for perm in src["Permissions"]:
        if _http_matches(perm["HTTP"], method, path, headers):
            return perm["Action"] == "allow"
    return default == "allow"


ENTRIES = [
    {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "web", "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/api/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/api/", "Methods": ["GET", "HEAD"]}},
            {"Action": "allow", "HTTP": {"PathExact": "/health", "Header": [{"Name": "x-probe", "Present": True}]}},
            {"Action": "deny", "HTTP": {"Methods": ["POST", "DELETE"]}},
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x-env", "Exact": "prod", "Invert": True}]}},
        ]},
        {"Name": "admin", "Action": "allow"},
        {"Name": "*", "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["GET"], "PathPrefix": "/api/public"}}]},
    ]},
    {"Kind": "service-intentions", "Name": "*", "Sources": [
        {"Name": "batch", "Action": "deny"},
        {"Name": "web", "Action": "allow"},
        {"Name": "*", "Action": "deny"},
    ]},
    {"Kind": "service-intentions", "Name": "db", "Sources": [
        {"Name": "api", "Action": "allow"},
        {"Name": "web", "Action": "deny"},
    ]},
]

REQUESTS = list(itertools.product(
    ("GET", "POST", "DELETE", "HEAD"),
    ("/api/admin/x", "/api/items", "/api/public/a", "/health", "/other"),
    ({}, {"x-probe": "1"}, {"x-env": "prod"}, {"x-env": "dev", "x-probe": "y"}),
))


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_compiled_policies_decide_as_consul(default):
    catalog = CatalogFacts(identities={s: (("default", s),) for s in SERVICES},
                           protocols={s: frozenset({"http"}) for s in SERVICES})
    result = compile_entries(_entries(*ENTRIES), CompileOptions(default_intention=default, catalog=catalog))
    assert not [f for f in result.findings if f.severity in ("unsupported", "invalid")], result.findings
    mismatches = []
    for caller, dest in itertools.product(SERVICES, SERVICES):
        for method, path, headers in REQUESTS:
            want = consul_decides(ENTRIES, default, caller, dest, method, path, headers)
            got = decide(result.resources, {"app": dest}, "default",
                         Request(principal=f"cluster.local/ns/default/sa/{caller}", method=method, path=path,
                                 headers=headers))
            if got.allowed != want:
                mismatches.append((caller, dest, method, path, headers, want, got.reason))
    assert not mismatches, mismatches[:10]


def test_service_account_maps_to_spiffe_identity_and_sharing_is_reported():
    """Intentions name services; meshcore's SPIFFE IDs name service accounts (meta service-account)."""
    catalog = CatalogFacts(identities={"web": (("default", "frontend"),), "web2": (("default", "frontend"),),
                                       "api": (("team-a", "api"),)})
    entries = _entries({"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "deny"}]})
    result = compile_entries(entries, CompileOptions(catalog=catalog, trust_domain="example.org"))
    (policy,) = result.resources
    assert policy.namespace == "team-a"  # where api's workloads are
    assert policy.spec["rules"][0]["from"][0]["source"]["principals"] == ["example.org/ns/default/sa/frontend"]
    assert any(f.severity == "note" and "web2" in f.message for f in result.findings)


def test_unsupported_fields_are_reported_with_their_path():
    entries = _entries({"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"PathRegex": "/a.*"}}]},
        {"Name": "other", "Peer": "dc2-peer", "Action": "allow"},
        {"Name": "x", "Action": "allow", "Bogus": 1},
    ]})
    result = compile_entries(entries)
    paths = {(f.entry, f.field, f.severity) for f in result.findings}
    assert ("service-intentions/api", "Sources[0].Permissions[0].HTTP.PathRegex", "unsupported") in paths
    assert ("service-intentions/api", "Sources[1].Peer", "unsupported") in paths
    assert ("service-intentions/api", "Sources[2].Bogus", "unsupported") in paths


def test_meshcore_policy_for_the_same_destination_wins():
    from meshcore.resources.loader import load_documents

    own = load_documents("""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: api-own}
spec:
  selector: {matchLabels: {app: api}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]}]
""", "own.yaml")
    entries = _entries({"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "deny"}]},
                       {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "deny"}]})
    result = compile_entries(entries, existing=own)
    assert [r.name for r in result.resources] == ["consul-intentions-db"]
    assert any(f.severity == "overridden" and f.entry == "service-intentions/api"
               and "AuthorizationPolicy/default/api-own" in f.message for f in result.findings)


def test_wildcard_source_without_namespace_is_every_service_in_every_namespace():
    """Consul without namespaces: ``*`` is every service; meshcore may put services in namespaces (meta)."""
    catalog = CatalogFacts(identities={"web": (("team-a", "web"),), "api": (("default", "api"),)})
    entries = _entries({"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "*", "Action": "deny"}]},
                       {"Kind": "service-intentions", "Name": "db", "Sources": [
                           {"Name": "*", "Namespace": "team-a", "Action": "deny"}]})
    result = compile_entries(entries, CompileOptions(catalog=catalog))
    by_name = {r.name: r for r in result.resources}
    deny_all = by_name["consul-intentions-api"].spec["rules"][0]["from"][0]["source"]["principals"]
    assert deny_all == ["*"]
    assert decide(result.resources, {"app": "api"}, "default",
                  Request(principal="cluster.local/ns/team-a/sa/web")).allowed is False
    team = by_name["consul-intentions-db"].spec["rules"][0]["from"][0]["source"]["principals"]
    assert team == ["cluster.local/ns/team-a/sa/*"]
