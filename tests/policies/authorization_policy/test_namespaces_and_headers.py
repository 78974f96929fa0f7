"""Namespaces scoped to the local trust domain, and list-valued headers (issue 12, finding 18), on generated RBAC.

``namespaces: [default]`` used to compile to ``spiffe://[^/]+/ns/default/.*``: a federated trust domain's
``default`` workloads were admitted (and DENYs on them held for every domain alike). A bare namespace now means
the local trust domain's; ``other.example/ns/default`` names another's, ``*/ns/default`` every domain's.
The real-Envoy checks of the header and path spellings are ``test_envoy_spellings.py``.
"""

from __future__ import annotations

import re

import pytest
from google.protobuf import json_format

from meshcore.authz import MeshContext, Request, decide
from meshcore.catalog.files import FileCatalogSource
from meshcore.policies.authorization_policy.rbac import rbac_stages
from meshcore.resources import load_documents
from meshcore.errors import ValidationError

from .._catalog import write_catalog

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\n"


def _stages(tmp_path, spec: str, trust_domain: str = "mesh.local"):
    write_catalog(tmp_path, [{"name": "web"}])
    [inst] = FileCatalogSource(tmp_path).poll(None, 0).catalog.instances
    policies = load_documents(HEAD + spec, "p.yaml")
    return inst, policies, {s.label: json_format.MessageToDict(s.rules) for s in rbac_stages(policies, inst, trust_domain)}


def _find(doc, key: str) -> list:
    """Every value of ``key`` anywhere in the JSON-like ``doc``."""
    if isinstance(doc, dict):
        return ([doc[key]] if key in doc else []) + [x for v in doc.values() for x in _find(v, key)]
    if isinstance(doc, list):
        return [x for v in doc for x in _find(v, key)]
    return []


def _regexes(doc) -> list[str]:
    return _find(doc, "regex")


SANS = {
    "local": "spiffe://mesh.local/ns/default/sa/a",
    "federated": "spiffe://other.example/ns/default/sa/a",
    "local-other-ns": "spiffe://mesh.local/ns/shop/sa/a",
}


@pytest.mark.parametrize("entry,admitted", [
    ("default", {"local"}),
    ("other.example/ns/default", {"federated"}),
    ("*/ns/default", {"local", "federated"}),
    ("*/ns/*", {"local", "federated", "local-other-ns"}),
])
def test_namespaces_are_the_local_trust_domains_unless_qualified(tmp_path, entry, admitted):
    inst, policies, stages = _stages(tmp_path, f"spec:\n  rules:\n  - from: [{{source: {{namespaces: [\"{entry}\"]}}}}]\n")
    [regex] = _regexes(stages["allow"])
    assert {name for name, san in SANS.items() if re.fullmatch(regex, san)} == admitted
    # the evaluator (meshctl authz check) decides the same
    ctx = MeshContext(trust_domain="mesh.local")
    for name, san in SANS.items():
        request = Request(principal=san, method="GET", path="/", host="web", port=inst.port)
        assert decide(policies, inst.labels, inst.namespace, request, context=ctx).allowed == (name in admitted), name


def test_a_when_condition_on_source_namespace_is_scoped_too(tmp_path):
    _, _, stages = _stages(tmp_path, "spec:\n  action: DENY\n  rules:\n"
                                     "  - when: [{key: source.namespace, values: [default]}]\n")
    assert _regexes(stages["deny"]) == ["spiffe://mesh\\.local/ns/default/.*"]


@pytest.mark.parametrize("entry", ["Other/ns/default", "other.example/ns/Bad", "a/b"])
def test_bad_qualified_namespaces_are_refused(entry):
    with pytest.raises(ValidationError):
        load_documents(HEAD + f"spec:\n  rules:\n  - from: [{{source: {{namespaces: [\"{entry}\"]}}}}]\n", "p.yaml")


def _header_matchers(stage: dict) -> list[dict]:
    return _find(stage, "header")


@pytest.mark.parametrize("action,field,elements", [
    ("DENY", "values", True),       # DENY x-env in [prod]: any element of a list matches
    ("AUDIT", "values", True),
    ("DENY", "notValues", False),   # DENY x-env not in [prod]: the whole value must be prod to escape it
    ("ALLOW", "values", False),     # ALLOW x-env in [prod]: the whole value must be prod
    ("ALLOW", "notValues", True),   # ALLOW x-env not in [prod]: no element may be prod
])
def test_list_valued_headers_never_help_past_a_policy(tmp_path, action, field, elements):
    _, _, stages = _stages(tmp_path, f"spec:\n  action: {action}\n  rules:\n"
                                     f"  - when: [{{key: \"request.headers[x-env]\", {field}: [prod]}}]\n")
    [matcher] = _header_matchers(stages[action.lower()])
    string_match = matcher["stringMatch"]
    if not elements:
        assert string_match == {"exact": "prod"}
        return
    regex = string_match["safeRegex"]["regex"]
    for value, hit in (("prod", True), ("prod,dev", True), ("dev, prod", True), ("dev,prod ,x", True),
                       ("production", False), ("dev", False), ("xprod,dev", False)):
        assert (re.fullmatch(regex, value) is not None) == hit, (regex, value)
