"""The evaluator: Istio's AuthorizationPolicy semantics, table-driven over policies loaded by the real loader."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.authz import Decision, Request, decide, policy_rules
from meshcore.resources import load_documents

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"
PP = {"app": "productpage", "version": "v1"}
BACKEND = "cluster.local/ns/default/sa/backend"
GATEWAY = "cluster.local/ns/default/sa/ingress-gateway"


def ap(name: str, spec: str, namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"


def load(*docs: str):
    return load_documents("".join(docs), "policies.yaml")


def req(**kw) -> Request:
    kw.setdefault("port", 9080)
    return Request(**kw)


def verdict(policies, request, labels=PP, namespace="default") -> bool:
    return decide(policies, labels, namespace, request).allowed


def test_no_policy_allows_and_says_so():
    d = decide([], PP, "default", req())
    assert d == Decision(True, None, None, None, "no policy selects productpage: allowed")


def test_product_brief_policy():
    res = load(ap("frontend-policy", """
        selector: {matchLabels: {app: productpage}}
        rules:
        - from: [{source: {principals: ["cluster.local/ns/default/sa/backend"]}}]
          to: [{operation: {methods: ["GET", "POST"]}}]
        """))
    d = decide(res, PP, "default", req(principal=BACKEND, method="POST"))
    assert (d.allowed, d.action, d.policy, d.rule_index) == (True, "ALLOW", "default/frontend-policy", 0)
    assert d.reason == "allowed by ALLOW policy default/frontend-policy rule 0"
    d = decide(res, PP, "default", req(principal=BACKEND, method="DELETE"))
    assert (d.allowed, d.action, d.policy, d.rule_index) == (False, "ALLOW", None, None)
    assert "ALLOW policies select productpage (default/frontend-policy)" in d.reason
    assert not verdict(res, req(principal=GATEWAY, method="GET"))
    assert not verdict(res, req(principal=None, method="GET"))  # plaintext: no principal
    # the selector does not match details: unaffected
    assert decide(res, {"app": "details"}, "default", req(principal=GATEWAY)).reason == "no policy selects details: allowed"


def test_deny_beats_allow():
    res = load(
        ap("allow-all", "selector: {matchLabels: {app: productpage}}\nrules: [{}]"),
        ap("no-post", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]"),
    )
    d = decide(res, PP, "default", req(method="POST"))
    assert (d.allowed, d.action, d.policy, d.rule_index) == (False, "DENY", "default/no-post", 0)
    assert d.reason == "denied by DENY policy default/no-post rule 0"
    assert decide(res, PP, "default", req(method="GET")).policy == "default/allow-all"


def test_first_deny_in_namespace_name_order_and_rule_order_decides():
    res = load(
        ap("b-deny", "action: DENY\nrules: [{to: [{operation: {paths: ['/x']}}]}]"),
        ap("a-deny", "action: DENY\nrules: [{to: [{operation: {paths: ['/y']}}]}, {}]"),
    )
    d = decide(res, PP, "default", req(path="/x"))
    assert (d.policy, d.rule_index) == ("default/a-deny", 1)


@pytest.mark.parametrize("spec", ["selector: {matchLabels: {app: productpage}}", "selector: {matchLabels: {app: productpage}}\nrules: []"])
def test_allow_policy_without_rules_denies_everything_it_selects(spec):
    res = load(ap("lockdown", spec))
    d = decide(res, PP, "default", req(principal=BACKEND))
    assert not d.allowed and "default/lockdown (no rules)" in d.reason
    assert verdict(res, req(), labels={"app": "details"})


def test_empty_rule_allows_everything():
    res = load(ap("open", "selector: {matchLabels: {app: productpage}}\nrules: [{}]"))
    for r in (req(), req(principal=BACKEND, method="DELETE", path="/admin")):
        assert verdict(res, r)


def test_mesh_wide_deny_all_and_its_exception():
    res = load(ap("deny-all", "{}", namespace="meshcore-system"))
    assert not verdict(res, req(principal=GATEWAY))
    assert not verdict(res, req(), labels={"app": "ratings"}, namespace="shop")
    opened = load(
        ap("deny-all", "{}", namespace="meshcore-system"),
        ap("gateway-to-productpage", """
            selector: {matchLabels: {app: productpage}}
            rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/ingress-gateway"]}}]}]
            """),
    )
    assert verdict(opened, req(principal=GATEWAY))
    assert not verdict(opened, req(principal=BACKEND))
    assert not verdict(opened, req(principal=GATEWAY), labels={"app": "details"})


def test_deny_policy_without_rules_changes_nothing():
    res = load(ap("empty-deny", "action: DENY"))
    d = decide(res, PP, "default", req())
    assert d.allowed and d.reason == "no DENY rule matches and no ALLOW policy selects productpage: allowed"


def test_audit_never_changes_the_decision_but_is_reported():
    res = load(
        ap("audit-posts", "action: AUDIT\nrules: [{to: [{operation: {methods: [POST]}}]}]"),
        ap("deny-admin", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin/*']}}]}]"),
    )
    d = decide(res, PP, "default", req(method="POST", path="/admin/x"))
    assert (d.allowed, d.policy, d.audit) == (False, "default/deny-admin", ("default/audit-posts[0]",))
    d = decide(res, PP, "default", req(method="POST"))
    assert d.allowed and d.audit == ("default/audit-posts[0]",)
    assert decide(res, PP, "default", req(method="GET")).audit == ()


# --- one table: fields, wildcards, not*, when -----------------------------------------------------------

TABLE_POLICY = ap("table", """
    selector: {matchLabels: {app: productpage}}
    rules:
    - from: [{source: {principals: ["cluster.local/ns/default/*"], notPrincipals: ["*/sa/legacy"]}}]
      to: [{operation: {methods: ["GET"], paths: ["/api/*", "*.js", "/exact"], notPaths: ["/api/private/*"]}}]
    - from: [{source: {namespaces: ["prod-*", "edge"], notNamespaces: ["prod-test"]}}]
      to: [{operation: {hosts: ["bookinfo.example.com", "*.internal"], notMethods: ["DELETE"]}}]
    - from: [{source: {ipBlocks: ["10.0.0.0/8"], notIpBlocks: ["10.9.0.0/16"]}}]
      when:
      - key: request.headers[X-Env]
        values: ["prod", "stag*"]
        notValues: ["*-broken"]
    - when:
      - {key: source.principal, values: ["cluster.local/ns/ops/sa/admin"]}
      - {key: destination.port, values: ["9080"]}
    - to: [{operation: {ports: ["9443"]}}, {operation: {methods: ["OPTIONS"], notPorts: ["9080"]}}]
    - when: [{key: "request.headers[x-canary]", values: ["*"]}]
    """)


@pytest.mark.parametrize(
    "request_kw, allowed, rule",
    [
        # rule 0: principal prefix, path exact/prefix/suffix, notPaths, notPrincipals
        ({"principal": BACKEND, "path": "/api/books"}, True, 0),
        ({"principal": BACKEND, "path": "/api/books?page=2"}, True, 0),  # query ignored
        ({"principal": BACKEND, "path": "/static/app.js"}, True, 0),
        ({"principal": BACKEND, "path": "/exact"}, True, 0),
        ({"principal": BACKEND, "path": "/exact/more"}, False, None),
        ({"principal": BACKEND, "path": "/api/private/keys"}, False, None),
        ({"principal": BACKEND, "path": "/api//private/./keys"}, False, None),  # normalized as Envoy does
        ({"principal": BACKEND, "path": "/api/books", "method": "POST"}, False, None),
        ({"principal": "cluster.local/ns/default/sa/legacy", "path": "/api/books"}, False, None),
        ({"principal": "spiffe://cluster.local/ns/default/sa/backend", "path": "/api/x"}, True, 0),  # scheme stripped
        ({"principal": "cluster.local/ns/other/sa/backend", "path": "/api/books"}, False, None),
        # rule 1: namespaces prefix, notNamespaces, hosts (case, ports, suffix), notMethods
        ({"principal": "cluster.local/ns/prod-eu/sa/x", "host": "bookinfo.example.com"}, True, 1),
        ({"principal": "cluster.local/ns/prod-eu/sa/x", "host": "BookInfo.Example.com:8080"}, True, 1),
        ({"principal": "cluster.local/ns/edge/sa/x", "host": "db.internal:5432"}, True, 1),
        ({"principal": "cluster.local/ns/edge/sa/x", "host": "db.internal", "method": "DELETE"}, False, None),
        ({"principal": "cluster.local/ns/prod-test/sa/x", "host": "bookinfo.example.com"}, False, None),
        ({"principal": "cluster.local/ns/edge/sa/x", "host": "evil.example.com"}, False, None),
        ({"principal": "cluster.local/meshcore/node/vm1", "host": "bookinfo.example.com"}, False, None),  # no namespace
        # rule 2: ipBlocks, notIpBlocks, header values/notValues
        ({"source_ip": "10.1.2.3", "headers": {"X-Env": "prod"}}, True, 2),
        ({"source_ip": "10.1.2.3", "headers": {"x-env": "staging"}}, True, 2),
        ({"source_ip": "10.1.2.3", "headers": {"x-env": "staging-broken"}}, False, None),
        ({"source_ip": "10.9.0.1", "headers": {"x-env": "prod"}}, False, None),
        ({"source_ip": "192.168.0.1", "headers": {"x-env": "prod"}}, False, None),
        ({"source_ip": "10.1.2.3"}, False, None),  # header absent
        # rule 3: when source.principal and destination.port
        ({"principal": "cluster.local/ns/ops/sa/admin", "method": "DELETE"}, True, 3),
        ({"principal": "cluster.local/ns/ops/sa/admin", "port": 9443, "method": "DELETE"}, True, 4),
        ({"principal": "cluster.local/ns/ops/sa/other"}, False, None),
        # rule 4: ports, notPorts
        ({"port": 9443}, True, 4),
        ({"port": 9444, "method": "OPTIONS"}, True, 4),
        ({"port": 9080, "method": "OPTIONS"}, False, None),
        # rule 5: header presence
        ({"headers": {"x-canary": ""}}, True, 5),
        ({"headers": {"x-canary-not": "1"}}, False, None),
    ],
)
def test_table(request_kw, allowed, rule):
    res = load(TABLE_POLICY)
    d = decide(res, PP, "default", req(**request_kw))
    assert (d.allowed, d.rule_index) == (allowed, rule), d.reason


def test_not_fields_match_plaintext_callers():
    res = load(ap("not-legacy", """
        selector: {matchLabels: {app: productpage}}
        rules: [{from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/legacy"]}}]}]
        """))
    assert verdict(res, req(principal=None))
    assert verdict(res, req(principal=BACKEND))
    assert not verdict(res, req(principal="cluster.local/ns/default/sa/legacy"))


def test_any_principal_needs_an_identity():
    res = load(ap("authenticated", """
        selector: {matchLabels: {app: productpage}}
        rules: [{from: [{source: {principals: ["*"]}}]}]
        """))
    assert verdict(res, req(principal=BACKEND)) and not verdict(res, req(principal=None))


# --- TCP: Istio's fail-closed rule for HTTP-only fields -----------------------------------------------------


def test_tcp_drops_allow_rules_with_http_fields_and_strips_them_from_deny_rules():
    res = load(
        ap("allow", """
            selector: {matchLabels: {app: db}}
            rules:
            - {from: [{source: {principals: ["cluster.local/ns/default/sa/a"]}}], to: [{operation: {methods: [GET]}}]}
            - {from: [{source: {principals: ["cluster.local/ns/default/sa/b"]}}], to: [{operation: {ports: ["5432"]}}]}
            """),
        ap("deny", """
            selector: {matchLabels: {app: db}}
            action: DENY
            rules:
            - from: [{source: {principals: ["cluster.local/ns/default/sa/b"]}}]
              to: [{operation: {paths: ["/admin"]}}]
            """),
    )
    db = {"app": "db"}
    a = Request(principal="cluster.local/ns/default/sa/a", port=5432, protocol="tcp")
    b = Request(principal="cluster.local/ns/default/sa/b", port=5432, protocol="tcp")
    c = Request(principal="cluster.local/ns/default/sa/c", port=5432, protocol="tcp")
    # a's only ALLOW rule uses methods: dropped for TCP, so a is denied (the same rule allows a over HTTP)
    assert not decide(res, db, "default", a).allowed
    assert decide(res, db, "default", Request(principal="cluster.local/ns/default/sa/a", port=5432)).allowed
    # the DENY rule loses its path condition: it now denies b for every connection
    d = decide(res, db, "default", b)
    assert (d.allowed, d.policy) == (False, "default/deny")
    assert not decide(res, db, "default", c).allowed
    assert policy_rules(res[0], "tcp").dropped == (0,)


def test_request_normalization():
    r = Request(principal="spiffe://cluster.local/ns/shop/sa/cart", headers={"X-A": "1"})
    assert (r.principal, r.source_namespace, dict(r.headers)) == ("cluster.local/ns/shop/sa/cart", "shop", {"x-a": "1"})
    assert Request().source_namespace is None
    assert Request(principal="cluster.local/ns/a/sa/b", source_namespace="override").source_namespace == "override"
