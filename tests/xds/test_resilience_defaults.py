"""Resilience defaults of the generated config (issue 12, finding 14): Istio's default retries on every mesh
route, to another host each time, and outlier detection on every mesh upstream cluster, each replaced by what a
VirtualService (``retries``) or a DestinationRule (``outlierDetection``) says. The real-Envoy behaviour (an
instance's Envoy or app killed under load, no request failing) is ``tests/e2e/test_resilience.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from meshcore.catalog.files import FileCatalogSource
from meshcore.compose import build_proxy
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds._typeurls import CLUSTER, ROUTE
from meshcore.xds.generate._safe_retries import SAFE_METHODS_ROUTE
from meshcore.xds.generate.routes import PREVIOUS_HOSTS

CATALOG = Path(__file__).resolve().parents[2] / "examples" / "bookinfo" / "consul.d"
NODES = ("vm1", "vm2", "vm3", "gateway")
ISTIO_CONDITIONS = {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}


def _built(node: str, resources: str = "") -> dict:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    snap = MeshSnapshot.build(catalog, load_documents(resources, "r.yaml") if resources else [])
    return build_proxy(snap, ProxyInfo(node=node, secrets_dir="/s"))


def _routes(built: dict, prefix: str) -> list:
    out = []
    for rc in built[ROUTE]:
        assert isinstance(rc, route_pb2.RouteConfiguration)
        if rc.name.startswith(prefix):
            out += [(rc.name, r) for vh in rc.virtual_hosts for r in vh.routes]
    return out


def _assert_istio_default(name: str, policy) -> None:
    assert policy.num_retries.value == 2, name
    assert ISTIO_CONDITIONS <= set(policy.retry_on.split(",")), (name, policy.retry_on)
    assert list(policy.retriable_status_codes) == [503], name
    assert [p.name for p in policy.retry_host_predicate] == [PREVIOUS_HOSTS], name
    assert policy.host_selection_retry_max_attempts == 5, name


@pytest.mark.parametrize("node", NODES)
def test_every_outbound_route_retries_like_istio_and_inbound_never_does(node):
    built = _built(node)
    outbound = _routes(built, "outbound:")
    assert outbound, f"{node} has no outbound route"
    for name, route in outbound:
        assert route.route.HasField("retry_policy"), f"{name}: no retry policy"
        _assert_istio_default(name, route.route.retry_policy)
        conditions = set(route.route.retry_policy.retry_on.split(","))
        if route.name == SAFE_METHODS_ROUTE:  # GET/HEAD/OPTIONS/TRACE: also retried after a reset mid-request
            [method] = route.match.headers
            assert method.name == ":method" and method.string_match.safe_regex.regex == "GET|HEAD|OPTIONS|TRACE"
            assert "reset" in conditions
        else:
            assert route.name == "default" and "reset" not in conditions, name  # a POST may have been processed
    names = [r.name for _, r in outbound]
    assert names.count(SAFE_METHODS_ROUTE) == names.count("default") == len(names) // 2
    for vhost in (vh for rc in built[ROUTE] if rc.name.startswith("outbound:") for vh in rc.virtual_hosts):
        assert [r.name for r in vhost.routes] == [SAFE_METHODS_ROUTE, "default"], "the twin first: it is the narrower"
        twin, default = vhost.routes
        assert twin.route.cluster == default.route.cluster and twin.route.timeout == default.route.timeout
    for name, route in _routes(built, "inbound:"):
        assert not route.route.HasField("retry_policy"), f"{name}: the caller retries, not the inbound side"


@pytest.mark.parametrize("node", NODES)
def test_every_upstream_cluster_has_outlier_detection(node):
    clusters = [c for c in _built(node)[CLUSTER] if c.name.startswith("outbound:")]
    assert clusters
    for cl in clusters:
        assert isinstance(cl, cluster_pb2.Cluster)
        od = cl.outlier_detection
        assert cl.HasField("outlier_detection"), cl.name
        assert od.consecutive_gateway_failure.value == 5 and od.enforcing_consecutive_gateway_failure.value == 100
        assert od.enforcing_consecutive_5xx.value == 0  # an app's own 500s do not eject it
        assert od.enforcing_success_rate.value == 0
        assert od.max_ejection_percent.value == 50  # never the only instance of a service
        assert od.base_ejection_time.seconds == 30 and od.interval.seconds == 5
    for cl in (c for c in _built(node)[CLUSTER] if c.name.startswith("local_app:")):
        assert not cl.HasField("outlier_detection"), cl.name


VS = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: tuned
    match: [{uri: {prefix: /tuned}}]
    retries: {attempts: 4, retryOn: "5xx,reset", perTryTimeout: 1s}
    route: [{destination: {host: reviews}}]
  - name: none
    match: [{uri: {prefix: /none}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"""


def test_virtual_service_retries_override_the_default_and_attempts_0_turns_them_off():
    routes = {r.name: r for _, r in _routes(_built("vm1", VS), "outbound:reviews")}
    tuned = routes["tuned"].route.retry_policy  # Istio names a route after its http[].name
    assert tuned.num_retries.value == 4 and tuned.retry_on == "5xx,reset" and tuned.per_try_timeout.seconds == 1
    assert [p.name for p in tuned.retry_host_predicate] == [PREVIOUS_HOSTS]  # to another host, as Istio's
    assert not routes["none"].route.HasField("retry_policy")
    _assert_istio_default("http[2]", routes["default/reviews/http[2]"].route.retry_policy)


DR = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 60s}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
"""


def test_destination_rule_outlier_detection_replaces_the_default_and_others_keep_it():
    clusters = {c.name: c for c in _built("vm1", DR)[CLUSTER]}
    od = clusters["outbound:reviews|productpage"].outlier_detection
    assert od.consecutive_5xx.value == 3 and od.enforcing_consecutive_5xx.value == 100
    assert od.interval.seconds == 1 and od.base_ejection_time.seconds == 60
    assert not od.HasField("consecutive_gateway_failure")  # the DestinationRule's, whole, not merged
    details = clusters["outbound:details|productpage"]
    assert details.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert details.outlier_detection.consecutive_gateway_failure.value == 5  # no outlierDetection: the default
