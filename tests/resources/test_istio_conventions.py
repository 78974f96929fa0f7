"""Istio's conventions where meshcore was silent or wrong (issue 17, item 3).

Files exported from a cluster load (inert metadata and ``status`` noted and ignored); ``istio-system`` is the
root namespace (a ported mesh-wide deny-all denies); relative weights, presence matches, ``ISTIO_MUTUAL``,
``retries.backoff`` as a duration and ``http[].name`` reach the Envoy config as Istio's would; hints never
offer a field of opposite meaning.
"""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from meshcore.authz import Request, decide
from meshcore.errors import ValidationError
from meshcore.resources import load_documents
from meshcore.resources.loader import KINDS, validate_set
from meshcore.resources.kinds._fields import ROOT_NAMESPACE
from meshcore.xds.generate import ROUTE

from tests.policies._catalog import build, write_catalog

EXPORTED = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: istio-system
  uid: 0f8e4a2c-1111-2222-3333-444455556666
  creationTimestamp: "2024-05-01T10:00:00Z"
  resourceVersion: "81234"
  generation: 3
  managedFields: [{manager: kubectl, operation: Update}]
  labels: {team: platform}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"kind":"AuthorizationPolicy"}'
spec: {}
status: {validationMessages: []}
"""


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "x.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_exported_file_loads_with_a_note_for_each_ignored_field():
    notes: list = []
    [res] = load_documents(EXPORTED, "exported.yaml", notes)
    by_path = {n.path: n.message for n in notes}
    for path in ("status", "metadata.uid", "metadata.creationTimestamp", "metadata.resourceVersion",
                 "metadata.generation", "metadata.managedFields",
                 'metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]'):
        assert by_path[path].startswith("ignored"), path
    assert res.annotations == () and res.labels == (("team", "platform"),)
    assert "uid" not in res.canonical_json() and "status" not in res.canonical_json()


ISTIO_BOOKINFO_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"""


@pytest.mark.parametrize("api_version,kind,spec", [
    ("networking.istio.io/v1", "DestinationRule", "{host: reviews}"),
    ("networking.istio.io/v1beta1", "VirtualService", "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}"),
    ("networking.istio.io/v1alpha3", "ServiceEntry", "{hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}"),
    ("networking.istio.io/v1", "Sidecar", "{egress: [{hosts: ['./*']}]}"),
    ("networking.istio.io/v1beta1", "Gateway", "{selector: {app: gw}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}"),
    ("security.istio.io/v1", "AuthorizationPolicy", "{}"),
    ("security.istio.io/v1beta1", "PeerAuthentication", "{mtls: {mode: STRICT}}"),
    ("security.istio.io/v1", "RequestAuthentication", "{jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]}"),
])
def test_istio_api_versions_load_as_meshcores_with_a_note(api_version, kind, spec):
    notes: list = []
    [res] = load_documents(f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n",
                           "istio.yaml", notes)
    assert res.api_version == KINDS[kind].api_version and res.api_version.split(".")[1] == "mesh"
    assert {n.path: n.message for n in notes}["apiVersion"] == f"{api_version} is Istio's: read as {res.api_version}"


def test_a_wrong_api_version_is_refused_naming_both_spellings():
    assert _errors(ISTIO_BOOKINFO_RULE.replace("networking.istio.io/v1", "networking.istio.io/v2"))["apiVersion"] == (
        'must be "networking.mesh.io/v1beta1" (or Istio\'s networking.istio.io/v1, networking.istio.io/v1beta1, '
        'networking.istio.io/v1alpha3) for kind DestinationRule, got "networking.istio.io/v2"')
    # a kind of Istio's in the other group of Istio's is not read either; a meshcore-only kind has no Istio spelling
    assert "security.istio.io/v1" in _errors(ISTIO_BOOKINFO_RULE.replace("kind: DestinationRule",
                                                                        "kind: AuthorizationPolicy"))["apiVersion"]
    assert _errors("apiVersion: telemetry.istio.io/v1\nkind: AlertRule\nmetadata: {name: a}\nspec: {}\n")[
        "apiVersion"].startswith('must be "telemetry.mesh.io/v1beta1" for kind AlertRule')


def test_the_istio_api_versions_are_those_of_istios_crds():
    """Against the data derived from Istio's published CRDs (tests/resources/data/istio-api-versions.yaml; that it
    is derived from them is checked by test_istio_field_coverage when the CRDs are at hand)."""
    import yaml

    from meshcore.resources.loader import ISTIO_API_VERSIONS

    from tests.resources._istio_fields import API_VERSIONS

    data = yaml.safe_load(API_VERSIONS.read_text())
    assert data == {kind: sorted(v) for kind, v in sorted(ISTIO_API_VERSIONS.items())}


def test_istio_system_is_the_root_namespace_and_a_ported_deny_all_denies():
    notes: list = []
    [res] = load_documents(EXPORTED, "exported.yaml", notes)
    assert res.namespace == ROOT_NAMESPACE
    assert any(n.path == "metadata.namespace" and "istio-system" in n.message for n in notes)
    d = decide([res], {"app": "reviews"}, "shop", Request(method="GET", path="/", port=9080))
    assert not d.allowed and "meshcore-system/deny-all" in d.reason


def test_istio_system_deny_all_denies_in_the_generated_rbac(tmp_path):
    write_catalog(tmp_path, [{"name": "web"}])
    built = build(tmp_path, EXPORTED)
    [route] = [r for r in built[ROUTE] if r.name == "inbound:web-v1"]
    config = json_format.MessageToDict(route)["virtualHosts"][0]["typedPerFilterConfig"]
    [allow] = [v for k, v in config.items() if k.endswith("allow")]
    allow = allow.get("config", allow)  # RBACPerRoute, wrapped in a FilterConfig where the filter is optional
    assert allow["rbac"]["rules"].get("policies") is None  # an ALLOW stage without rules: every request denied
    assert allow["rbac"]["rules"].get("action", "ALLOW") == "ALLOW"


def test_istios_experimental_regex_prefix_is_refused_not_matched_as_text():
    # Istio's authz test configs use "regex:" values (an istiod feature flag, off by default): accepted, they
    # would be exact matches against the literal text and never match, so a DENY would fail open
    doc = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n"
           "  action: DENY\n  rules:\n  - from: [{source: {principals: ['regex:cluster.local/ns/.*/sa/a']}}]\n"
           "    when: [{key: 'request.headers[x-id]', values: ['regex:^a.*']}]\n")
    errors = _errors(doc)
    assert set(errors) == {"spec.rules[0].from[0].source.principals[0]", "spec.rules[0].when[0].values[0]"}
    assert all("'regex:' prefix" in m and "'prefix*'" in m for m in errors.values())


def test_unknown_metadata_is_still_an_error():
    errs = _errors(EXPORTED.replace("  uid:", "  uuid:"))
    assert "metadata.uuid" in errs


def test_request_principals_are_accepted_and_a_near_miss_gets_the_same_sense_hint():
    doc = ("apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
           "spec:\n  rules: [{from: [{source: {requestPrincipals: [\"https://issuer.example/alice\"]}}]}]\n")
    load_documents(doc, "x.yaml")
    [msg] = _errors(doc.replace("requestPrincipals", "requestPrincipal")).values()
    assert 'did you mean "requestPrincipals"' in msg


@pytest.mark.parametrize("field,wrong,right", [("remoteIpBlock", "notIpBlocks", "remoteIpBlocks")])
def test_hints_never_suggest_a_field_of_opposite_meaning(field, wrong, right):
    doc = ("apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
           f"spec:\n  rules: [{{from: [{{source: {{{field}: [x]}}}}]}}]\n")
    [msg] = _errors(doc).values()
    assert wrong not in msg and f'did you mean "{right}"' in msg


def test_unknown_fields_hint_only_same_sense_fields():
    doc = ("apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
           "spec:\n  rules: [{from: [{source: {remotePrincipals: [x]}}]}]\n")
    [msg] = _errors(doc).values()
    assert "did you mean \"notPrincipals\"" not in msg


def test_suggest_keeps_negated_hints_for_negated_words():
    from meshcore.resources.schema import suggest

    assert suggest("notPrincipal", ["principals", "notPrincipals"]) == "notPrincipals"
    assert suggest("principal", ["principals", "notPrincipals"]) == "principals"
    assert suggest("requestPrincipals", ["principals", "notPrincipals"]) != "notPrincipals"


VS = """\
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [api]
  http:
  - name: canary
    match:
    - {name: beta-users, headers: {x-beta: {}}}
    - queryParams: {beta: {}}
    route:
    - {destination: {host: api}, weight: 1}
    - {destination: {host: web}, weight: 3}
    retries: {attempts: 2, backoff: 25ms, retryIgnorePreviousHosts: false}
  - route:
    - destination: {host: api}
      weight: 40
"""


def test_virtual_service_conventions_reach_the_routes():
    from meshcore.policies.virtual_service.routes import http_routes
    from meshcore.policies.virtual_service.spec import spec_of

    [vs] = load_documents(VS, "vs.yaml")
    spec = spec_of(vs)
    assert spec.http[0].retries.backoff_base_interval == 0.025 and spec.http[0].retries.backoff_max_interval is None
    built = [json_format.MessageToDict(r) for r in http_routes(vs, lambda h, s: f"c:{h}", lambda h, s: [], 15.0)]
    assert [r["name"] for r in built] == ["canary.beta-users", "canary", "default/web/http[1]"]
    assert built[0]["match"]["headers"] == [{"name": "x-beta", "presentMatch": True}]
    assert built[1]["match"]["queryParameters"] == [{"name": "beta", "presentMatch": True}]
    weights = built[0]["route"]["weightedClusters"]["clusters"]
    assert [(w["name"], w["weight"]) for w in weights] == [("c:api", 1), ("c:web", 3)]
    retry = built[0]["route"]["retryPolicy"]
    assert retry["retryBackOff"] == {"baseInterval": "0.025s"} and "retryHostPredicate" not in retry
    assert built[2]["route"]["cluster"] == "c:api"  # a single destination takes all, whatever its weight


def test_backoff_mapping_form_still_works():
    from meshcore.policies.virtual_service.spec import spec_of

    [vs] = load_documents(VS.replace("backoff: 25ms", "backoff: {baseInterval: 25ms, maxInterval: 1s}"), "vs.yaml")
    r = spec_of(vs).http[0].retries
    assert (r.backoff_base_interval, r.backoff_max_interval, r.ignore_previous_hosts) == (0.025, 1.0, False)
    errs = _errors(VS.replace("backoff: 25ms", "backoff: 25"))
    assert errs["spec.http[0].retries.backoff"].startswith("must be a duration")


DR = """\
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy: {tls: {mode: MODE}}
"""


def test_istio_mutual_is_the_mesh_mtls_and_other_modes_say_why():
    assert validate_set(load_documents(DR.replace("MODE", "ISTIO_MUTUAL"), "dr.yaml")) == []
    # towards a mesh service the set's check refuses origination (SIMPLE, MUTUAL) and DISABLE against the default
    # STRICT mTLS; towards a ServiceEntry host they are TLS origination (tests/policies/destination_rule)
    for mode in ("DISABLE", "SIMPLE", "MUTUAL, clientCertificate: /etc/app/c.pem, privateKey: /etc/app/k.pem"):
        [error] = validate_set(load_documents(DR.replace("MODE", mode), "dr.yaml"))
        assert error.path == "spec.trafficPolicy.tls.mode" and "'api'" in error.message and ("mesh service" in error.message or "STRICT" in error.message), error
    msg = _errors(DR.replace("{mode: MODE}", "{mode: ISTIO_MUTUAL, sni: api.example}"))["spec.trafficPolicy.tls.sni"]
    assert "SIMPLE or MUTUAL" in msg and "ISTIO_MUTUAL" in msg, msg
