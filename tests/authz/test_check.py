"""check(): what `meshctl authz check` reports, on the bookinfo catalog read by the real file source."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.authz import CheckQuery, Pattern, check, host_regex, normalize_path
from meshcore.authz.patterns import path_matches, path_template_envoy
from meshcore.authz.providers import parse_mesh_settings
from meshcore.catalog.files import FileCatalogSource
from meshcore.errors import ConfigError
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSnapshot

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "bookinfo" / "consul.d"


def snapshot(*files: str) -> MeshSnapshot:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    resources = []
    for name in files:
        path = ROOT / "examples" / "policies" / name
        resources += load_documents(path.read_text(), str(path))
    return MeshSnapshot.build(catalog, resources)


def test_no_policy():
    out = check(snapshot(), CheckQuery(destination="details", source="productpage"))
    assert out["allowed"] is True
    assert out["from"] == {"service": "productpage", "principal": "cluster.local/ns/default/sa/productpage",
                           "ip": "127.0.0.11", "namespace": "default"}
    [result] = out["results"]
    assert result["instances"] == ["details-v1"] and result["reason"] == "no policy selects details: allowed"


def test_contract_policy_example():
    snap = snapshot("productpage-get-only.yaml")
    post = check(snap, CheckQuery(destination="productpage", source="ingress-gateway", method="POST", path="/productpage"))
    assert post["allowed"] is False
    assert post["from"]["principal"] == "cluster.local/ns/default/sa/ingress-gateway"
    assert "ALLOW policies select productpage (default/productpage-get-only)" in post["results"][0]["reason"]
    get = check(snap, CheckQuery(destination="productpage", source="ingress-gateway", path="/productpage"))
    assert get["allowed"] and get["results"][0]["policy"] == "default/productpage-get-only"
    assert get["results"][0]["rule_index"] == 0


def test_principal_policy_and_foreign_identity():
    snap = snapshot("details-from-productpage.yaml")
    assert check(snap, CheckQuery(destination="details", source="productpage", path="/details/0"))["allowed"]
    other = check(snap, CheckQuery(destination="details", source="cluster.local/meshcore/node/tester", path="/details/0"))
    assert other["allowed"] is False and other["from"]["namespace"] is None
    assert "not a workload identity" in other["results"][0]["reason"]  # Envoy refuses it before any policy
    plain = check(snap, CheckQuery(destination="details", path="/details/0"))
    assert plain["allowed"] is False and plain["from"]["principal"] is None


def test_mesh_wide_deny_all_example():
    snap = snapshot("deny-all.yaml")
    for dest, src in (("productpage", "ingress-gateway"), ("details", "productpage"), ("ratings", "reviews")):
        out = check(snap, CheckQuery(destination=dest, source=src))
        assert out["allowed"] is False
        assert "meshcore-system/deny-all (no rules)" in out["results"][0]["reason"]


def test_instances_decided_differently_are_reported_apart():
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    res = load_documents(
        "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: v3-closed}\n"
        "spec: {selector: {matchLabels: {app: reviews, version: v3}}}\n", "x.yaml")
    out = check(MeshSnapshot.build(catalog, res), CheckQuery(destination="reviews", source="productpage"))
    assert out["allowed"] is False
    verdicts = {tuple(r["instances"]): r["allowed"] for r in out["results"]}
    assert verdicts == {("reviews-v1",): True, ("reviews-v2",): True, ("reviews-v3",): False}


def test_unknown_services_are_errors_naming_the_known_ones():
    with pytest.raises(ConfigError, match="no mesh service 'nope'.*details"):
        check(snapshot(), CheckQuery(destination="nope", source="productpage"))
    with pytest.raises(ConfigError, match="no service 'nope' in the catalog"):
        check(snapshot(), CheckQuery(destination="details", source="nope"))


def test_patterns():
    assert Pattern.parse("/api/*").matches("/api/x") and not Pattern.parse("/api/*").matches("/apix")
    assert Pattern.parse("*.js").matches("/a.js") and Pattern.parse("*").matches("x")
    assert not Pattern.parse("*").matches("") and not Pattern.parse("GET").matches(None)
    assert host_regex("productpage") == "(?i)productpage(:[0-9]+)?"
    assert host_regex("a.example.com:8080") == "(?i)a\\.example\\.com:8080"
    assert host_regex("*.example.com") == "(?i).*\\.example\\.com(:[0-9]+)?"
    assert normalize_path("/a//b/./c/../d?x=1#f") == "/a/b/d"


@pytest.mark.parametrize("template,path,hit", [
    ("/foo/{*}", "/foo/bar", True), ("/foo/{*}", "/foo/bar/baz", False), ("/foo/{*}", "/foo/", False),
    ("/foo/{**}/", "/foo/bar/", True), ("/foo/{**}/", "/foo//", True), ("/foo/{**}/", "/foo/bar", False),
    ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", True), ("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", True),
    ("/{**}", "/", True), ("/v1/{*}", "/v1/a%20b", True), ("/v1/{*}", "/v1/a*b", False),
])
def test_path_templates_match_as_envoys_uri_template(template, path, hit):
    assert path_matches(template, path) is hit
    assert path_template_envoy(template) == template.replace("{**}", "**").replace("{*}", "*")


def _doc_policies() -> list:
    """Every YAML example of docs/security.md, loaded (and so validated) by the real loader."""
    text = (ROOT / "docs" / "security.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert len(blocks) >= 5
    resources = []
    for i, block in enumerate(blocks):
        if "\nkind:" not in "\n" + block:  # a mesh config (--mesh-config): checked as the control plane reads it
            parse_mesh_settings(block, f"docs/security.md#yaml{i}")
            continue
        resources += load_documents(block, f"docs/security.md#yaml{i}")
    return resources


def test_docs_examples_validate_and_do_what_the_docs_say():
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    by_name = {r.name: r for r in _doc_policies()}
    opening = ["deny-all", "gateway-clients", "productpage-from-gateway", "details-reviews-from-productpage",
               "ratings-from-reviews"]
    snap = MeshSnapshot.build(catalog, [by_name[n] for n in opening])

    def allowed(src, dst, path, method="GET"):
        return check(snap, CheckQuery(destination=dst, source=src, path=path, method=method))["allowed"]

    assert allowed("ingress-gateway", "productpage", "/productpage")
    assert allowed("productpage", "details", "/details/0") and allowed("productpage", "reviews", "/reviews/0")
    assert allowed("reviews", "ratings", "/ratings/0")
    assert not allowed("productpage", "ratings", "/ratings/0")
    assert not allowed("ingress-gateway", "details", "/details/0")
    assert not allowed("productpage", "details", "/details/0", method="DELETE")


def test_destination_ip_tells_instances_apart_and_sni_defaults_to_the_service_name():
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    res = load_documents(
        "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: by-address}\n"
        "spec:\n  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules:\n"
        "  - when: [{key: destination.ip, values: [127.0.0.12/32]}]\n"
        "  - when: [{key: connection.sni, values: ['*.internal.meshcore']}]\n", "x.yaml")
    snap = MeshSnapshot.build(catalog, res)
    out = check(snap, CheckQuery(destination="reviews", source="productpage"))
    verdicts = {tuple(r["instances"]): r["allowed"] for r in out["results"]}
    assert verdicts == {("reviews-v1",): True, ("reviews-v2",): False, ("reviews-v3",): True}
    via = check(snap, CheckQuery(destination="reviews", source="productpage", sni="reviews.dc2.internal.meshcore"))
    assert {tuple(r["instances"]): r["rule_index"] for r in via["results"]} == {
        ("reviews-v1",): 1, ("reviews-v2",): 0, ("reviews-v3",): 1}
    assert not any(r["allowed"] for r in via["results"])
