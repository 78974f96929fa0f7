"""DestinationRule: schema with exact field paths, policy merging, subset selection, set checks."""

from __future__ import annotations

import pytest

from meshcore.errors import ValidationError
from meshcore.policies.destination_rule import schema as dr
from meshcore.policies.destination_rule.spec import ConnectionPool, LoadBalancer, TrafficPolicy, spec_of
from meshcore.resources.loader import load_documents, validate_set

HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata: {name: reviews}\n"


def _errors(spec_yaml: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + spec_yaml, "dr.yaml")
    return {e.path: e.message for e in info.value.errors}


def _load(spec_yaml: str, name: str = "reviews", namespace: str = "default"):
    text = HEAD.replace("{name: reviews}", f"{{name: {name}, namespace: {namespace}}}") + spec_yaml
    (res,) = load_documents(text, "dr.yaml")
    return res


def test_full_example_is_valid():
    res = _load("""
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRetries: 0}
    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 2, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2, "tag:canary": "true"}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 1h}}}}}
""")
    assert res.kind == "DestinationRule" and res.spec["host"] == "reviews"
    assert dr.subset_names(res) == ["v1", "v2"]


def test_spec_and_host_are_required():
    assert _errors("") == {"spec": "required field is missing"}
    assert _errors("spec: {subsets: []}") == {"spec.host": "required field is missing"}


def test_host_must_be_a_service_name():
    errs = _errors("spec: {host: reviews.prod.cluster.local}")
    assert errs == {"spec.host": '"reviews.prod.cluster.local": hosts are Consul service names in meshcore; '
                                 'write "reviews"'}
    assert "wildcard" in _errors('spec: {host: "*"}')["spec.host"]
    assert "wildcard" in _errors('spec: {host: "*.default.svc.cluster.local"}')["spec.host"]


def test_a_kubernetes_service_name_is_read_as_the_consul_service_with_a_note():
    from meshcore.resources import load_documents

    for spelling in ("reviews.default.svc.cluster.local", "reviews.default.svc"):
        notes: list = []
        [dr] = load_documents("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
                              f"spec: {{host: {spelling}}}\n", "r.yaml", notes)
        assert dr.spec["host"] == "reviews"
        assert any(n.path == "spec.host" and "read as the Consul service \"reviews\"" in n.message for n in notes)
    notes = []
    [vs] = load_documents("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
                          "spec: {hosts: [reviews.default.svc.cluster.local], http: [{route: [{destination: "
                          "{host: reviews.default.svc.cluster.local, subset: v1}}]}]}\n", "r.yaml", notes)
    assert vs.spec["hosts"] == ["reviews"] and vs.spec["http"][0]["route"][0]["destination"]["host"] == "reviews"
    assert {n.path for n in notes} >= {"spec.hosts[0]", "spec.http[0].route[0].destination.host"}


def test_load_balancer_errors_have_exact_paths():
    errs = _errors("""
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
  subsets:
  - name: v1
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}
  - name: v2
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: X-User, useSourceIp: true}}
  - name: v3
    trafficPolicy:
      loadBalancer: {simple: round_robin}
""")
    assert "spec.trafficPolicy.loadBalancer.simple" not in errs  # LEAST_CONN: read as LEAST_REQUEST, with a note
    assert errs["spec.subsets[0].trafficPolicy.loadBalancer"] == "set either simple or consistentHash, not both"
    assert errs["spec.subsets[1].trafficPolicy.loadBalancer.consistentHash.httpHeaderName"] == \
        'header names must be lowercase: write "x-user"'
    assert 'did you mean "ROUND_ROBIN"' in errs["spec.subsets[2].trafficPolicy.loadBalancer.simple"]


def test_consistent_hash_needs_exactly_one_key():
    errs = _errors("spec: {host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: a, httpQueryParameterName: b}}}}")
    assert errs == {"spec.trafficPolicy.loadBalancer.consistentHash":
                    "consistentHash must set exactly one of: httpHeaderName, httpCookie, useSourceIp, "
                    "httpQueryParameterName (got httpHeaderName, httpQueryParameterName)"}


def test_connection_pool_and_outlier_values():
    errs = _errors("""
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 0, connectTimeout: 2}
      http: {http1MaxPendingRequests: -1, maxRetries: 1.5}
    outlierDetection: {interval: 10, baseEjectionTime: 0s, maxEjectionPercent: 101}
""")
    p = "spec.trafficPolicy."
    assert errs[p + "connectionPool.tcp.maxConnections"].startswith("must be an integer 1-4294967295")
    assert errs[p + "connectionPool.tcp.connectTimeout"] == \
        'must be a duration such as "500ms", "2s" or "1m30s", got integer (write "2s")'
    assert errs[p + "connectionPool.http.http1MaxPendingRequests"].startswith("must be an integer 1-")
    assert errs[p + "connectionPool.http.maxRetries"].startswith("must be an integer 0-")
    assert p + "outlierDetection.interval" in errs
    assert errs[p + "outlierDetection.baseEjectionTime"] == 'must be at least 1ms, got "0s"'
    assert errs[p + "outlierDetection.maxEjectionPercent"] == "must be an integer 0-100 (got 101)"


def test_durations_parse_or_are_reported():
    errs = _errors("spec: {host: r, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 2 sec}}}}")
    assert "is not a duration" in errs["spec.trafficPolicy.connectionPool.tcp.connectTimeout"]
    errs = _errors("spec: {host: r, trafficPolicy: {connectionPool: {tcp: {connectTimeout: '5'}}}}")
    assert "has no unit" in errs["spec.trafficPolicy.connectionPool.tcp.connectTimeout"]


def test_empty_blocks_are_refused():
    errs = _errors("spec: {host: r, trafficPolicy: {connectionPool: {}, outlierDetection: {}, loadBalancer: {}}}")
    assert set(errs) == {"spec.trafficPolicy.connectionPool", "spec.trafficPolicy.outlierDetection",
                         "spec.trafficPolicy.loadBalancer"}


def test_subset_names_unique_and_dns_labels():
    errs = _errors("""
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: V2}
  - {labels: {version: v4}, tls: {mode: ISTIO_MUTUAL}}
""")
    assert "is not a valid name" in errs["spec.subsets[1].name"]
    assert errs["spec.subsets[2].name"] == "required field is missing"
    assert errs["spec.subsets[2].tls"].startswith('unknown field "tls"')
    errs = _errors("spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v1}]}")
    assert errs == {"spec.subsets[1].name": 'subset "v1" is already defined at subsets[0]; subset names must be unique'}


def test_subset_policy_overrides_host_policy_field_by_field():
    res = _load("""
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 5}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
""")
    spec = spec_of(res)
    assert spec.effective_policy() == TrafficPolicy(LoadBalancer(simple="RANDOM"), ConnectionPool(max_connections=5))
    assert spec.effective_policy("v1") == spec.effective_policy()
    assert spec.effective_policy("v2") == TrafficPolicy(LoadBalancer(simple="LEAST_REQUEST"),
                                                        ConnectionPool(max_connections=5))
    assert spec.effective_policy("no-such-subset") == spec.effective_policy()


def test_subset_selection_by_labels():
    assert dr.selects({"app": "reviews", "version": "v2", "tag:canary": "true"}, {"version": "v2", "tag:canary": "true"})
    assert not dr.selects({"app": "reviews", "version": "v1"}, {"version": "v2"})
    assert dr.selects({"app": "reviews"}, {})


def test_one_rule_per_host_first_by_namespace_and_name():
    a = _load("spec: {host: reviews}", name="a")
    b = _load("spec: {host: reviews}", name="b")
    other = _load("spec: {host: ratings}", name="c")
    assert dr.rule_for([b, other, a], "reviews") is a
    errors = validate_set([b, a, other])
    assert [(e.source, e.path) for e in errors] == [("DestinationRule/default/b", "spec.host")]
    assert "already has DestinationRule default/a" in errors[0].message
