"""Istio's identity fields of a source: ``serviceAccounts``, ``notServiceAccounts``, ``trustDomains``,
``notTrustDomains`` (issue 17 item 1).

Validation with field paths; the compiled RBAC principals (read by a small interpreter of Envoy's Principal
matcher) and meshcore's evaluator (``meshctl authz check``) admit the same callers, for SPIFFE IDs of the mesh's own
trust domain, of federated ones and none (plaintext). (Other SPIFFE paths never reach RBAC: the inbound
listeners accept only ``spiffe://<td>/ns/<ns>/sa/<sa>`` at the handshake.)
"""

from __future__ import annotations

import re

import pytest

from meshcore.authz import MeshContext, Request, decide
from meshcore.catalog.files import FileCatalogSource
from meshcore.errors import ValidationError
from meshcore.policies.authorization_policy.rbac import rbac_stages
from meshcore.resources import load_documents

from .._catalog import write_catalog

HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\n"
LOCAL = "mesh.local"
CALLERS = {
    "local-sleep": "mesh.local/ns/default/sa/sleep",
    "local-cart": "mesh.local/ns/shop/sa/cart",
    "partner-sleep": "partner.example/ns/default/sa/sleep",
    "partner-cart": "partner.example/ns/shop/sa/cart",
    "other-sleep": "other.example/ns/default/sa/sleep",
    "plaintext": None,
}


def _string(m, value: str) -> bool:
    if "exact" in m.DESCRIPTOR.fields_by_name and m.HasField("safe_regex"):
        return re.fullmatch(m.safe_regex.regex, value) is not None
    kind = m.WhichOneof("match_pattern")
    return {"exact": value == m.exact, "prefix": value.startswith(m.prefix), "suffix": value.endswith(m.suffix)}[kind]


def _principal(p, san: str | None) -> bool:
    """Envoy's RBAC Principal for a caller presenting ``san`` (None: no certificate), for the kinds compiled here."""
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "authenticated":
        return san is not None and _string(p.authenticated.principal_name, san)
    if kind == "or_ids":
        return any(_principal(x, san) for x in p.or_ids.ids)
    if kind == "and_ids":
        return all(_principal(x, san) for x in p.and_ids.ids)
    if kind == "not_id":
        return not _principal(p.not_id, san)
    raise AssertionError(f"unexpected principal kind {kind}")


def _admitted(tmp_path, spec: str) -> set[str]:
    """Callers a policy lets a GET through, by compiled RBAC; asserts the evaluator decides the same."""
    write_catalog(tmp_path, [{"name": "web"}])
    [inst] = FileCatalogSource(tmp_path).poll(None, 0).catalog.instances
    policies = load_documents(HEAD + spec, "p.yaml")
    stages = {s.label: s.rules for s in rbac_stages(policies, inst, LOCAL)}
    out = set()
    for name, principal in CALLERS.items():
        san = None if principal is None else "spiffe://" + principal
        denied = any(any(_principal(q, san) for q in pol.principals) for pol in stages["deny"].policies.values()) \
            if "deny" in stages else False
        allowed = any(any(_principal(q, san) for q in pol.principals) for pol in stages["allow"].policies.values()) \
            if "allow" in stages else True
        envoy = allowed and not denied
        request = Request(principal=principal, method="GET", path="/", host="web", port=inst.port)
        evaluated = decide(policies, inst.labels, inst.namespace, request, context=MeshContext(trust_domain=LOCAL))
        assert evaluated.allowed == envoy, (name, evaluated)
        if envoy:
            out.add(name)
    return out


def _rules(*sources: str, action: str = "ALLOW") -> str:
    return f"spec:\n  action: {action}\n  rules:\n  - from:\n" + "".join(f"    - source: {s}\n" for s in sources)


@pytest.mark.parametrize("sources,admitted", [
    (["{serviceAccounts: [default/sleep]}"], {"local-sleep"}),
    (["{serviceAccounts: [default/sleep, shop/cart]}"], {"local-sleep", "local-cart"}),
    (["{serviceAccounts: [default/sleep], trustDomains: [partner.example]}"], {"partner-sleep"}),
    (["{serviceAccounts: [default/sleep], trustDomains: [partner.example, mesh.local]}"],
     {"partner-sleep", "local-sleep"}),
    (["{trustDomains: [partner.example]}"], {"partner-sleep", "partner-cart"}),
    (["{notTrustDomains: [mesh.local]}"], {"partner-sleep", "partner-cart", "other-sleep", "plaintext"}),
    (["{trustDomains: [partner.example], notServiceAccounts: [shop/cart]}"], {"partner-sleep"}),
    (["{notServiceAccounts: [default/sleep], trustDomains: [mesh.local]}"], {"local-cart"}),
    (["{serviceAccounts: [default/sleep]}", "{trustDomains: [other.example]}"], {"local-sleep", "other-sleep"}),
])
def test_allow_admits_the_named_identities(tmp_path, sources, admitted):
    assert _admitted(tmp_path, _rules(*sources)) == admitted


def test_deny_by_trust_domain_and_account(tmp_path):
    spec = _rules("{trustDomains: [partner.example], notServiceAccounts: [default/sleep]}",
                  "{notTrustDomains: [mesh.local, partner.example]}", action="DENY")
    assert _admitted(tmp_path, spec) == {"local-sleep", "local-cart", "partner-sleep"}


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        load_documents(HEAD + spec, "p.yaml")
    return {e.path: e.message for e in exc.value.errors}


@pytest.mark.parametrize("source,path,message", [
    ("{serviceAccounts: [sleep]}", "serviceAccounts[0]", "write <namespace>/<service account>"),
    ("{serviceAccounts: [default/*]}", "serviceAccounts[0]", "match exactly"),
    ("{serviceAccounts: [Default/sleep]}", "serviceAccounts[0]", "is not a namespace"),
    ("{notServiceAccounts: [default/Sleep_1]}", "notServiceAccounts[0]", "not a service account name"),
    ("{trustDomains: [spiffe://x]}", "trustDomains[0]", "is not a trust domain"),
    ("{notTrustDomains: ['*']}", "notTrustDomains[0]", "is not a trust domain"),
    ("{serviceAccounts: [default/sleep], principals: [a/b]}", "serviceAccounts", "cannot be set with principals"),
    ("{notServiceAccounts: [default/sleep], namespaces: [default]}", "notServiceAccounts",
     "cannot be set with namespaces"),
    ("{serviceAccounts: [" + ", ".join(f"default/a{i}" for i in range(17)) + "]}", "serviceAccounts",
     "at most 16 entries"),
])
def test_invalid_identity_fields_are_refused_at_their_path(source, path, message):
    errors = _errors(_rules(source))
    full = f"spec.rules[0].from[0].source.{path}"
    assert full in errors and message in errors[full], errors
