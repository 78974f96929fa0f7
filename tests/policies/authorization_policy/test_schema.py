"""AuthorizationPolicy: validation with exact field paths, normalization, and which workloads a policy selects."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.errors import ValidationError
from meshcore.resources import KINDS, load_documents
from meshcore.policies.authorization_policy.schema import action_of, policies_for, selects

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"

PRODUCT_BRIEF = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: frontend-policy
spec:
  selector:
    matchLabels:
      app: frontend
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/backend"]
    to:
    - operation:
        methods: ["GET", "POST"]
"""


def ap(spec: str, name: str = "p", namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n" + body.rstrip("\n") + "\n"


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        load_documents(text, "ap.yaml")
    return {e.path: e.message for e in exc.value.errors}


def test_registered_after_peer_authentication():
    assert list(KINDS)[:2] == ["PeerAuthentication", "AuthorizationPolicy"]
    assert KINDS["AuthorizationPolicy"].api_version == "security.mesh.io/v1beta1"


def test_product_brief_example_validates_verbatim():
    [res] = load_documents(PRODUCT_BRIEF, "brief.yaml")
    assert (res.kind, res.namespace, res.name) == ("AuthorizationPolicy", "default", "frontend-policy")
    assert res.spec == {
        "selector": {"matchLabels": {"app": "frontend"}},
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/backend"]}}],
                   "to": [{"operation": {"methods": ["GET", "POST"]}}]}],
    }
    assert action_of(res) == "ALLOW"


def test_every_field_accepted_and_ports_normalized_to_strings():
    [res] = load_documents(ap("""\
        action: DENY
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/*", "*/sa/backend", "*"]
              notPrincipals: ["cluster.local/ns/default/sa/legacy"]
              namespaces: ["prod-*"]
              notNamespaces: ["*-test"]
              ipBlocks: ["10.0.0.0/8", "192.168.1.7"]
              notIpBlocks: ["10.1.0.0/16", "2001:db8::/32"]
          to:
          - operation:
              methods: ["GET", "*"]
              notMethods: ["DELETE"]
              paths: ["/api/*", "*.js", "/exact", "*"]
              notPaths: ["/admin/*"]
              ports: ["9080", 9443]
              notPorts: [22]
              hosts: ["bookinfo.example.com", "*.example.com", "example.*"]
              notHosts: ["internal:8080"]
          when:
          - key: request.headers[X-Env]
            values: ["prod", "stag*"]
            notValues: ["*debug"]
          - {key: source.principal, values: ["cluster.local/ns/default/sa/a"]}
          - {key: source.namespace, notValues: ["kube-*"]}
          - {key: source.ip, values: ["127.0.0.0/8"]}
          - {key: destination.port, values: [9080, "9443"]}
        """), "all.yaml")
    rule = res.spec["rules"][0]
    assert rule["to"][0]["operation"]["ports"] == ["9080", "9443"]
    assert rule["to"][0]["operation"]["notPorts"] == ["22"]
    assert rule["when"][4]["values"] == ["9080", "9443"]


@pytest.mark.parametrize("spec", ["{}", "", "rules: []", "rules: [{}]", "action: AUDIT\nrules: [{}]"])
def test_empty_forms_are_valid(spec):
    [res] = load_documents(ap(spec, "deny-all", "meshcore-system"), "x.yaml")
    assert res.namespace == "meshcore-system"
    [bare] = load_documents(HEAD + "metadata: {name: deny-all, namespace: meshcore-system}\n", "x.yaml")
    assert bare.spec == {}


def test_errors_have_exact_paths():
    found = errors(ap("""\
        action: allow
        rules:
        - from:
          - source:
              principals: ["spiffe://cluster.local/ns/default/sa/backend", "a*b"]
              namespaces: ["Prod"]
              ipBlocks: ["10.0.0.0/33"]
          to:
          - operation:
              methods: ["GET", "POST", "get"]
              paths: ["api", "/x?y=1"]
              ports: ["0", "http"]
              hosts: ["**"]
          when:
          - {key: "request.header[x]", values: [a]}
          - {key: source.ip, values: ["not-an-ip"]}
          - {key: destination.port, notValues: ["99999"]}
          - {key: source.principal}
          - {key: "source.principals", values: [x]}
        - from:
          - {}
          - source: {}
          to:
          - operation: {method: [GET]}
        """))
    r0 = "spec.rules[0]"
    assert found["spec.action"] == 'must be one of "ALLOW", "DENY", "AUDIT", "CUSTOM", got "allow"; did you mean "ALLOW"?'
    assert "without the spiffe:// scheme" in found[f"{r0}.from[0].source.principals[0]"]
    assert '"cluster.local/ns/default/sa/backend"' in found[f"{r0}.from[0].source.principals[0]"]
    assert "'*' may only be" in found[f"{r0}.from[0].source.principals[1]"]
    assert "not a namespace" in found[f"{r0}.from[0].source.namespaces[0]"]
    assert "CIDR" in found[f"{r0}.from[0].source.ipBlocks[0]"]
    assert found[f"{r0}.to[0].operation.methods[2]"] == 'HTTP methods are case-sensitive: write "GET", not "get"'
    assert f"{r0}.to[0].operation.methods[0]" not in found
    assert "must start with '/'" in found[f"{r0}.to[0].operation.paths[0]"]
    assert "query string" in found[f"{r0}.to[0].operation.paths[1]"]
    assert "1-65535" in found[f"{r0}.to[0].operation.ports[0]"]
    assert "1-65535" in found[f"{r0}.to[0].operation.ports[1]"]
    assert "'*' may only be" in found[f"{r0}.to[0].operation.hosts[0]"]
    assert "request.headers[<name>]" in found[f"{r0}.when[0].key"]
    assert "CIDR" in found[f"{r0}.when[1].values[0]"]
    assert "1-65535" in found[f"{r0}.when[2].notValues[0]"]
    assert found[f"{r0}.when[3]"] == "a condition needs values or notValues (or both)"
    assert "unsupported key" in found[f"{r0}.when[4].key"] and "source.principal" in found[f"{r0}.when[4].key"]
    r1 = "spec.rules[1]"
    assert found[f"{r1}.from[0].source"] == "required field is missing"
    assert found[f"{r1}.from[1].source"].startswith("a source must set at least one of: principals")
    assert found[f"{r1}.to[0].operation.method"] == 'unknown field "method"; did you mean "methods"?'


def test_unknown_fields_and_custom_action():
    found = errors(ap("""\
        action: CUSTOM
        provider: {name: ext}
        rules: [{from: [{source: {principal: [x]}}]}]
        """))
    assert "spec.action" not in found and "spec.provider" not in found  # CUSTOM with its provider is valid
    assert found["spec.rules[0].from[0].source.principal"] == 'unknown field "principal"; did you mean "principals"?'


def test_wrong_types():
    found = errors(ap("""\
        selector: {matchLabels: [app]}
        rules: {from: []}
        """))
    assert found["spec.selector.matchLabels"].startswith("must be a mapping")
    assert found["spec.rules"] == "must be a list, got mapping"


# --- scope ----------------------------------------------------------------------------------------------


def _load(*docs: str):
    return load_documents("---\n".join(docs), "scope.yaml")


def test_scope_selector_namespace_and_mesh_wide():
    res = _load(
        ap("selector: {matchLabels: {app: reviews, version: v2}}", "reviews-v2"),
        ap("rules: [{}]", "ns-wide"),
        ap("{}", "deny-all", "meshcore-system"),
        ap("selector: {matchLabels: {app: reviews}}", "root-selector", "meshcore-system"),
        ap("selector: {matchLabels: {}}", "empty-selector", "shop"),
    )
    by_name = {r.name: r for r in res}
    v2 = {"app": "reviews", "version": "v2"}
    assert selects(by_name["reviews-v2"], v2, "default")
    assert not selects(by_name["reviews-v2"], {"app": "reviews", "version": "v1"}, "default")
    assert not selects(by_name["reviews-v2"], v2, "shop")  # a selector never reaches across namespaces
    assert selects(by_name["ns-wide"], {}, "default") and not selects(by_name["ns-wide"], {}, "shop")
    assert selects(by_name["deny-all"], {}, "shop") and selects(by_name["deny-all"], v2, "default")
    # a selector policy in the root namespace selects only root-namespace workloads
    assert not selects(by_name["root-selector"], {"app": "reviews"}, "default")
    assert selects(by_name["root-selector"], {"app": "reviews"}, "meshcore-system")
    assert selects(by_name["empty-selector"], {"app": "x"}, "shop")
    assert [r.name for r in policies_for(res, v2, "default")] == ["ns-wide", "reviews-v2", "deny-all"]


def test_path_templates_and_connection_keys():
    ok = load_documents(ap("""\
        rules:
        - to: [{operation: {paths: ["/api/{*}/items", "/static/{**}", "/a/{*}/b/{**}", "/x/{**}/",
                                   "/logs/{**}.gz", "/store/{**}/cart"],
                            notPaths: ["/api/{*}/"]}}]
          when:
          - {key: destination.ip, values: ["10.0.0.0/8", "192.168.0.1"]}
          - {key: connection.sni, values: ["*.internal.meshcore"], notValues: ["db"]}
          - {key: "request.headers[cookie]", values: ["*session=*"]}
        - to: [{operation: {paths: ["/Admin/*"], ignorePathCase: true}}]
        """), "ok.yaml")
    assert ok[0].spec["rules"][0]["to"][0]["operation"]["paths"][1] == "/static/{**}"
    found = errors(ap("""\
        rules:
        - to: [{operation: {paths: ["/{**}/foo/{*}", "/foo/{*}.txt/x", "/*/baz/{*}", "/a//{*}", "api/{*}"]}}]
          when:
          - {key: destination.ip, values: ["10.0.0.300"]}
          - {key: connection.sni, values: ["a*b"]}
          - {key: "request.headers[cookie]", values: ["*a*b*"]}
          - {key: source.principal, values: ["*admin*"]}
        - to: [{operation: {methods: [GET], ignorePathCase: true}}, {operation: {paths: ["/a/{*}"], ignorePathCase: true}}]
        """))
    paths = "spec.rules[0].to[0].operation.paths"
    assert "{**} must be the last operator" in found[f"{paths}[0]"]
    assert "must each be a whole path segment" in found[f"{paths}[1]"]
    assert "must each be a whole path segment" in found[f"{paths}[2]"]
    assert "empty segment" in found[f"{paths}[3]"]
    assert "starts with '/'" in found[f"{paths}[4]"]
    assert "CIDR" in found["spec.rules[0].when[0].values[0]"]
    assert "'*' may only be" in found["spec.rules[0].when[1].values[0]"]
    assert "'*' may only be" in found["spec.rules[0].when[2].values[0]"]
    assert "'*' may only be" in found["spec.rules[0].when[3].values[0]"]  # contains: header values only
    assert "applies to paths and notPaths" in found["spec.rules[1].to[0].operation.ignorePathCase"]
    assert "no case option" in found["spec.rules[1].to[1].operation.paths[0]"]
