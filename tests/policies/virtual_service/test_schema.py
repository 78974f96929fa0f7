"""VirtualService: schema with exact field paths, weights, matches, retries, faults; cross-resource checks."""

from __future__ import annotations

import pytest

from meshcore.errors import ValidationError
from meshcore.policies.virtual_service import schema as vs
from meshcore.resources.loader import load_documents, validate_set

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews}\n"
DR = """apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + text, "vs.yaml")
    return {e.path: e.message for e in info.value.errors}


def _load(text: str):
    return load_documents(HEAD + text, "vs.yaml")[0]


def test_full_example_is_valid():
    res = _load("""
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
      uri: {prefix: /reviews}
      method: {regex: "GET|HEAD"}
      queryParams: {debug: {exact: "1"}}
      ignoreUriCase: true
    - uri: {regex: "/reviews/[0-9]+"}
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    timeout: 5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,503,connect-failure", backoff: {baseInterval: 25ms, maxInterval: 1s}}
    fault: {delay: {fixedDelay: 1s, percentage: {value: 0.5}}, abort: {httpStatus: 503}}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 10}
    headers:
      request: {set: {x-env: prod}, add: {x-b: "1"}, remove: [x-debug]}
      response: {remove: [server]}
""")
    assert res.spec["hosts"] == ["reviews"] and len(res.spec["http"]) == 2


def test_weights_are_relative_as_istios():
    """Istio does not require a sum of 100: weights are proportions (Envoy divides by their sum)."""
    from meshcore.policies.virtual_service.spec import spec_of

    res = _load("""
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 1}
    - {destination: {host: reviews, subset: v2}, weight: 3}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
""")
    http = spec_of(res).http
    assert [d.weight for d in http[0].route] == [1, 3]
    assert [d.weight for d in http[1].route] == [100]  # a single destination takes everything, as in Istio


def test_weights_missing_among_several_are_zero_and_all_zero_is_refused():
    from meshcore.policies.virtual_service.spec import spec_of

    res = _load("""
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 100}
    - {destination: {host: reviews, subset: v2}}
""")
    assert [d.weight for d in spec_of(res).http[0].route] == [100, 0]
    errs = _errors("""
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}}
    - {destination: {host: reviews, subset: v2}, weight: 0}
  tcp:
  - route:
    - {destination: {host: reviews}, weight: -1}
""")
    assert errs["spec.http[0].route"].startswith("at least one destination needs a weight above 0")
    assert errs["spec.tcp[0].route[0].weight"] == "must be an integer 0-2147483647 (got -1)"


def test_match_errors_have_exact_paths():
    errs = _errors("""
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: reviews}
      headers: {End-User: {exact: jason}, x-a: {exact: a, prefix: b}}
      queryParams: {q: {regex: "(?=x)"}}
      method: {regex: "("}
    route: [{destination: {host: reviews}}]
""")
    m = "spec.http[0].match[0]."
    assert errs[m + "uri"] == "uri.prefix must start with '/', got \"reviews\""
    assert errs[m + 'headers["End-User"]'] == 'header names must be lowercase: write "end-user"'
    assert errs[m + 'headers["x-a"]'] == "a string match must set exactly one of: exact, prefix, regex (got exact, prefix)"
    assert "not supported (Envoy uses RE2)" in errs[m + 'queryParams["q"].regex']
    assert "is not a valid regular expression" in errs[m + "method.regex"]


def test_retries_fault_and_durations():
    errs = _errors("""
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    timeout: soon
    retries: {perTryTimeout: 0ms, retryOn: "5xx,sometimes,999", backoff: {baseInterval: 1s, maxInterval: 100ms}}
    fault: {abort: {httpStatus: 700, percentage: {value: 150}}, delay: {percentage: {value: 5}}}
    mirrorPercentage: {value: 5}
""")
    r = "spec.http[0]."
    assert "is not a duration" in errs[r + "timeout"]
    assert errs[r + "retries.attempts"] == "required field is missing"
    assert errs[r + "retries.perTryTimeout"] == 'must be at least 1ms, got "0ms"'
    assert errs[r + "retries.retryOn"].startswith('unknown retry condition "sometimes"')
    assert errs[r + "retries.backoff.maxInterval"] == "must not be shorter than baseInterval (1s), got 100ms"
    assert errs[r + "fault.abort.httpStatus"] == "must be an integer 200-599 (got 700)"
    assert errs[r + "fault.abort.percentage.value"] == "must be a number 0-100, got 150"
    assert errs[r + "fault.delay.fixedDelay"] == "required field is missing"


def test_istio_deprecated_integer_delay_percent_is_honoured_and_percentage_wins():
    """Istio's bookinfo fault samples write delay.percent (an integer); Istio honours it, and percentage beside it."""
    def delay_of(fault: str) -> float:
        res = _load("spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
                    f"    fault: {fault}\n")
        return res.typed.http[0].fault.delay.percentage

    assert delay_of("{delay: {percent: 30, fixedDelay: 7s}}") == 30.0
    assert delay_of("{delay: {percent: 30, percentage: {value: 12.5}, fixedDelay: 7s}}") == 12.5
    assert delay_of("{delay: {fixedDelay: 7s}}") == 100.0
    errs = _errors("spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
                   "    fault: {delay: {percent: 130, fixedDelay: 7s}}\n")
    assert errs["spec.http[0].fault.delay.percent"] == "must be an integer 0-100 (got 130)"


def test_mirror_percentage_needs_mirror_and_routes_are_needed():
    errs = _errors("spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrorPercentage: {value: 5}}]}")
    assert errs == {"spec.http[0].mirrorPercentage": "needs mirror (the destination that receives the copies)"}
    assert _errors("spec: {hosts: [reviews]}") == {"spec": "a VirtualService needs http, tls or tcp routes"}
    # no hosts: a delegate (Istio's reading), whose http rules are still checked
    assert _errors("spec: {hosts: [], http: [{route: []}]}") == {"spec.http[0].route": "must not be empty"}


def test_retry_on_splits_status_codes():
    assert vs.split_retry_on("5xx,503,504") == ("5xx,retriable-status-codes", [503, 504])
    assert vs.split_retry_on("connect-failure") == ("connect-failure", [])


def test_validate_set_needs_defined_subsets():
    text = HEAD + """spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
    mirror: {host: ratings, subset: v9}
"""
    alone = load_documents(text, "vs.yaml")
    errors = {e.path: e.message for e in validate_set(alone)}
    assert errors["spec.http[0].route[0].destination.subset"].startswith(
        'subset "v1" of host "reviews" is not defined: no DestinationRule has host "reviews"')
    with_dr = load_documents(DR + "---\n" + text, "both.yaml")
    errors = {e.path: (e.source, e.message) for e in validate_set(with_dr)}
    assert set(errors) == {"spec.http[0].route[1].destination.subset", "spec.http[0].mirror.subset"}
    assert errors["spec.http[0].route[1].destination.subset"] == (
        "VirtualService/default/reviews",
        'subset "v3" is not defined in DestinationRule default/reviews for host "reviews" (its subsets: v1, v2)')


def test_validate_set_one_virtual_service_per_host():
    a = load_documents(HEAD + "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}", "a")[0]
    b = load_documents(HEAD.replace("name: reviews", "name: zz") +
                       "spec: {hosts: [ratings, reviews], http: [{route: [{destination: {host: reviews}}]}]}", "b")[0]
    assert vs.service_for([b, a], "reviews") is a
    assert vs.service_for([b, a], "ratings") is b
    errors = validate_set([a, b])
    assert [(e.source, e.path) for e in errors] == [("VirtualService/default/zz", "spec.hosts[1]")]


def test_redirect_direct_response_rewrite_and_mirrors_reach_the_typed_spec():
    from meshcore.policies.virtual_service.spec import spec_of

    res = _load("""
spec:
  hosts: [reviews]
  http:
  - redirect: {uri: /new, redirectCode: 302}
  - directResponse: {status: 200, body: {bytes: aGk=}}
  - rewrite: {uri: /, authority: other}
    route: [{destination: {host: reviews}}]
    mirrors: [{destination: {host: reviews}, percentage: {value: 5}}]
""")
    redirect, direct, routed = spec_of(res).http
    assert (redirect.redirect.uri, redirect.redirect.code, redirect.route) == ("/new", 302, ())
    assert (direct.direct_response.status, direct.direct_response.body_bytes) == (200, b"hi")
    assert (routed.rewrite.uri, routed.rewrite.authority, routed.mirrors[0].percentage) == ("/", "other", 5.0)


def test_one_action_per_rule_and_what_goes_with_a_route():
    errs = _errors("""
spec:
  hosts: [reviews]
  http:
  - redirect: {uri: /new}
    route: [{destination: {host: reviews}}]
  - directResponse: {status: 503}
    rewrite: {uri: /}
    timeout: 1s
  - {}
  - redirect: {uri: /a, prefixRewrite: /b, redirectCode: 304}
  - directResponse: {status: 200, body: {bytes: "not base64!"}}
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
    mirrors: [{destination: {host: reviews}}]
""")
    assert errs["spec.http[0]"] == "an http rule needs exactly one of route, redirect, directResponse, delegate (got route, redirect)"
    assert errs["spec.http[1].rewrite"] == "rewrite applies to a route, not to directResponse"
    assert errs["spec.http[1].timeout"] == "timeout applies to a route, not to directResponse"
    assert errs["spec.http[2]"] == "an http rule needs exactly one of route, redirect, directResponse, delegate"
    assert errs["spec.http[3].redirect.redirectCode"] == "must be one of 301, 302, 303, 307, 308 (got 304)"
    assert errs["spec.http[4].directResponse.body.bytes"].startswith("must be base64")
    assert errs["spec.http[5].mirrors"].startswith("give mirror or mirrors, not both")


def test_source_matches_select_the_callers_proxy():
    from meshcore.policies.virtual_service.routes import http_routes

    res = _load("""
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}, {sourceNamespace: shop, withoutHeaders: {x-debug: {}}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
""")

    def names(labels, namespace):
        routes = http_routes(res, lambda h, s: h, lambda h, s: [], 15.0, (labels, namespace))
        return [r.name for r in routes]

    assert names({"app": "productpage"}, "default") == ["default/reviews/http[0]/match[0]", "default/reviews/http[1]"]
    assert names({"app": "ratings"}, "shop") == ["default/reviews/http[0]/match[1]", "default/reviews/http[1]"]
    assert names({"app": "ratings"}, "default") == ["default/reviews/http[1]"]


def test_gateways_mesh_and_gateway_names():
    _load("spec:\n  hosts: [reviews]\n  gateways: [mesh]\n  http: [{route: [{destination: {host: reviews}}]}]\n")
    _load("spec:\n  hosts: [reviews]\n  gateways: [istio-system/ingress, mesh]\n"
          "  http: [{route: [{destination: {host: reviews}}], match: [{gateways: [mesh, gw]}]}]\n")
    errs = _errors("spec:\n  hosts: [reviews]\n  gateways: [Ingress]\n"
                   "  http: [{route: [{destination: {host: reviews}}], match: [{gateways: [a/b/c]}]}]\n")
    assert errs["spec.gateways[0]"].startswith('gateway "Ingress": write mesh (the sidecars), a Gateway')
    assert errs["spec.http[0].match[0].gateways[0]"].startswith('gateway "a/b/c"')
