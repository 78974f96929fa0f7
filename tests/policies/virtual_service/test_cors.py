"""VirtualService ``corsPolicy``: validation with field paths, and the Envoy CORS policy per route."""

from __future__ import annotations

import pytest

from envoy.extensions.filters.http.cors.v3 import cors_pb2

from meshcore.errors import ValidationError
from meshcore.policies.virtual_service.cors import CORS_FILTER, cors_per_route, parse_cors
from meshcore.resources.loader import load_documents

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews}\n"


def _vs(cors: str) -> str:
    return HEAD + f"spec:\n  hosts: [reviews]\n  http:\n  - corsPolicy: {cors}\n    route: [{{destination: {{host: reviews}}}}]\n"


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "vs.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_errors_name_the_field():
    errs = _errors(_vs("{allowOrigin: [x], allowOrigins: [{exact: a, prefix: b}, {regex: '('}], "
                       "allowMethods: [get, 'G T'], allowHeaders: ['a b'], maxAge: 10, unmatchedPreflights: DROP}"))
    p = "spec.http[0].corsPolicy"
    assert errs[f"{p}.allowOrigin"] == ('"allowOrigin" is the deprecated spelling of "allowOrigins", which is also '
                                        "set: give one")
    assert "exactly one of: exact, prefix, regex" in errs[f"{p}.allowOrigins[0]"]
    assert f"{p}.allowOrigins[1].regex" in errs
    assert errs[f"{p}.allowMethods[0]"] == 'HTTP methods are case-sensitive: write "GET", not "get"'
    assert "not an HTTP method" in errs[f"{p}.allowMethods[1]"]
    assert "not an HTTP header name" in errs[f"{p}.allowHeaders[0]"]
    assert "duration" in errs[f"{p}.maxAge"]
    assert "FORWARD" in errs[f"{p}.unmatchedPreflights"]


def test_per_route_policy():
    [res] = load_documents(_vs("{allowOrigins: [{exact: 'https://a.example'}, {prefix: 'https://b.'}], "
                               "allowMethods: [GET, PUT], allowHeaders: [x-a, X-B], exposeHeaders: [x-id], "
                               "maxAge: 90s, allowCredentials: false, unmatchedPreflights: IGNORE}"), "vs.yaml")
    out = cors_per_route(parse_cors(res.spec["http"][0]["corsPolicy"]))
    assert [m.exact or m.prefix for m in out.allow_origin_string_match] == ["https://a.example", "https://b."]
    assert (out.allow_methods, out.allow_headers, out.expose_headers, out.max_age) == ("GET,PUT", "x-a,X-B", "x-id", "90")
    assert out.HasField("allow_credentials") and not out.allow_credentials.value
    assert not out.forward_not_matching_preflights.value


def test_defaults_forward_unmatched_preflights_and_leave_credentials_unset():
    out = cors_per_route(parse_cors({"allowOrigins": [{"regex": ".*"}]}))
    assert out.forward_not_matching_preflights.value and not out.HasField("allow_credentials") and out.max_age == ""


def test_routes_and_filter(tmp_path):
    from meshcore.compose import build_proxy
    from meshcore.snapshot import ProxyInfo
    from tests.xds.test_build_golden import _snapshot

    text = _vs("{allowOrigins: [{exact: '*'}]}").replace("reviews}\nspec", "reviews-cors}\nspec")
    built = build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir=str(tmp_path)))
    [route_config] = [r for r in built["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
                      if r.name.startswith("outbound:reviews")]
    [route] = route_config.virtual_hosts[0].routes
    policy = cors_pb2.CorsPolicy()
    assert route.typed_per_filter_config[CORS_FILTER].Unpack(policy)
    assert policy.allow_origin_string_match[0].exact == "*"
