"""The graph's click-through (meshcore.dashboard._details): a node's and an edge's facts, on the bookinfo catalog
read by the real file source, the example resources loaded as ``meshctl apply`` loads them, and a signal history as
the collector keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.api.dashboard import EdgeDetail, ServiceDetail
from meshcore.catalog.files import FileCatalogSource
from meshcore.dashboard import edge_detail, service_detail
from meshcore.errors import NotFound
from meshcore.observe.signals import labels
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSnapshot

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "bookinfo" / "consul.d"
NOW = 10_000.0

RATINGS_BY_CALLER_VERSION = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ratings-sources}
spec:
  hosts: [ratings]
  http:
  - name: from-reviews-v2
    match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: ratings}}]
    timeout: 2s
  - name: rest
    route: [{destination: {host: ratings}}]
"""


def snapshot(*files: str, extra: str = "") -> MeshSnapshot:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    resources = []
    for name in files:
        path = ROOT / "examples" / name
        resources += load_documents(path.read_text(), str(path))
    if extra:
        resources += load_documents(extra, "extra.yaml")
    return MeshSnapshot.build(catalog, resources)


def history_of(points: dict[str, list[tuple[float, dict]]]):
    """``history(signal, since)`` over fixed points: ``{signal: [(t, {labels: value})]}``."""
    return lambda name, since: [(t, v) for t, v in points.get(name, []) if t >= since]


EMPTY = history_of({})


def test_a_service_shows_its_instances_with_health_and_the_resources_that_apply():
    snap = snapshot("policies/productpage-get-only.yaml", "traffic/reviews-destination-rule.yaml",
                    "traffic/reviews-canary.yaml", "policies/strict-mesh-wide.yaml")
    d = service_detail(snap, EMPTY, "reviews", since=NOW - 900, now=NOW)
    assert isinstance(d, ServiceDetail) and d.kind == "service" and d.since_seconds == 900
    assert [(i.id, i.version, i.healthy) for i in d.instances] == [
        ("reviews-v1", "v1", True), ("reviews-v2", "v2", True), ("reviews-v3", "v3", True)]
    assert all(i.node and i.address.count(":") == 1 for i in d.instances)
    kinds = {(r.kind, r.name): r for r in d.resources}
    assert kinds[("VirtualService", "reviews")].detail == "routes the mesh's calls"
    assert kinds[("DestinationRule", "reviews")].detail == "subsets v1, v2, v3"
    pa = next(r for r in d.resources if r.kind == "PeerAuthentication")
    assert pa.detail == "effective mTLS STRICT" and "all instances" in pa.why
    assert ("AuthorizationPolicy", "productpage-get-only") not in kinds  # it selects productpage only
    page = service_detail(snap, EMPTY, "productpage", since=NOW - 900, now=NOW)
    ap = next(r for r in page.resources if r.kind == "AuthorizationPolicy")
    assert (ap.name, ap.detail, ap.why) == ("productpage-get-only", "ALLOW", "selects productpage-v1 (app=productpage)")
    assert page.denials.per_second is None and "no record of which callers" in page.denials.note
    # One version only (the versioned graph's node).
    v2 = service_detail(snap, EMPTY, "reviews", since=NOW - 900, now=NOW, version="v2")
    assert [i.id for i in v2.instances] == ["reviews-v2"]
    assert ServiceDetail.from_json(v2.to_json(), "detail") == v2  # the wire contract round-trips


def test_unknown_services_and_versions_are_not_found():
    snap = snapshot()
    with pytest.raises(NotFound, match="no service 'reviwes' in the catalog"):
        service_detail(snap, EMPTY, "reviwes", since=0, now=NOW)
    with pytest.raises(NotFound, match=r"no instances of version 'v9' \(its versions: v1, v2, v3\)"):
        service_detail(snap, EMPTY, "reviews", since=0, now=NOW, version="v9")
    with pytest.raises(NotFound):
        edge_detail(snap, EMPTY, "productpage", "nope", since=0, now=NOW)


def test_a_service_of_a_datacenter_this_control_plane_does_not_read_is_placed_there():
    # dc1's control plane reading dc1 only: web's calls to store went to dc2 (version edges, gateway routes)
    edge = labels(source="productpage", source_version="v1", source_datacenter="dc1", destination="store",
                  destination_version="", destination_datacenter="dc2", gateway="gw1")
    route = labels(gateway="gw1", datacenter="dc1", service="vault", destination_datacenter="dc3")
    history = history_of({"version_edge_request_rate": [(NOW - 30, {edge: 2.0})],
                          "gateway_connection_rate": [(NOW - 30, {route: 1.0})]})
    snap = snapshot()
    with pytest.raises(NotFound, match="'store' is in datacenter dc2") as info:
        service_detail(snap, history, "store", since=NOW - 900, now=NOW)
    assert info.value.api_details() == {"datacenters": ["dc2"]}
    with pytest.raises(NotFound, match="'vault' is in datacenter dc3"):
        edge_detail(snap, history, "productpage", "vault", since=NOW - 900, now=NOW)
    with pytest.raises(NotFound, match="no service 'store' in the catalog") as info:  # outside the window
        service_detail(snap, history, "store", since=NOW - 10, now=NOW)
    assert info.value.api_details() == {}


def test_service_figures_and_denials_come_from_the_history_over_the_window():
    page = labels(service="productpage")
    history = history_of({
        "request_rate": [(NOW - 2000, {page: 99.0}), (NOW - 10, {page: 4.0}), (NOW - 5, {page: 6.0})],
        "error_rate": [(NOW - 10, {page: 0.5}), (NOW - 5, {page: 0.0})],
        "p99_ms": [(NOW - 10, {page: 30.0}), (NOW - 5, {page: 12.0})],
        "policy_denied": [(NOW - 10, {page: 1.0}), (NOW - 5, {page: 3.0})],
    })
    d = service_detail(snapshot(), history, "productpage", since=NOW - 900, now=NOW)
    f = d.figures
    assert (f.rps, f.error_rate, f.p99_ms, f.points) == (5.0, 0.2, 30.0, 2)  # the 2000 s old point is outside
    assert (f.latest_rps, f.latest_error_rate, f.latest_p99_ms) == (6.0, 0.0, 12.0)
    assert d.denials.per_second == 2.0 and d.denials.latest_per_second == 3.0
    assert d.denials.estimated_total == 15.0 and d.denials.points == ((NOW - 10, 1.0), (NOW - 5, 3.0))


def test_an_edge_shows_its_routes_policy_and_authz_verdict():
    snap = snapshot("traffic/reviews-destination-rule.yaml", "traffic/reviews-canary.yaml",
                    "policies/productpage-get-only.yaml")
    edge = labels(source="productpage", destination="reviews")
    history = history_of({"edge_request_rate": [(NOW - 6, {edge: 2.0}), (NOW - 3, {edge: 4.0})],
                          "edge_error_rate": [(NOW - 6, {edge: 0.0}), (NOW - 3, {edge: 0.25})],
                          "edge_p99_ms": [(NOW - 3, {edge: 80.0})]})
    d = edge_detail(snap, history, "productpage", "reviews", since=NOW - 60, now=NOW)
    assert isinstance(d, EdgeDetail)
    assert (d.figures.rps, d.figures.error_rate, d.figures.p99_ms) == (3.0, pytest.approx(0.1667, abs=1e-4), 80.0)
    assert [(r.name, r.to) for r in d.routes] == [("jason", "reviews/v2"), ("default", "reviews/v1=90, reviews/v3=10")]
    assert d.routes[0].match == ({"headers": {"end-user": {"exact": "jason"}}},)
    assert d.routes[1].extra["timeout"] == "5s" and d.routes[1].extra["mirror"] == {"host": "reviews", "subset": "v2"}
    assert d.route_note == "VirtualService default/reviews routes the calls"
    assert d.destination_rule is not None and d.destination_rule.name == "reviews"
    assert d.traffic_policy["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert d.authz_allowed is True and d.authz_request == "GET /"
    assert {i for v in d.authz for i in v.instances} == {"reviews-v1", "reviews-v2", "reviews-v3"}
    # By version: the v2 subset's policy over the rule's; its calls' figures from the version edges.
    v = edge_detail(snap, EMPTY, "productpage", "reviews", since=NOW - 60, now=NOW, source_version="v1",
                    destination_version="v2")
    assert v.traffic_policy["loadBalancer"] == {"consistentHash": {"httpHeaderName": "end-user"}}
    assert "subset v2" in v.destination_rule.why and v.figures.rps is None
    assert [x.instances for x in v.authz] == [("reviews-v2",)]
    assert EdgeDetail.from_json(v.to_json(), "edge") == v


def test_an_edge_into_a_policy_that_refuses_it_and_routes_for_other_callers():
    snap = snapshot("policies/details-from-productpage.yaml", extra=RATINGS_BY_CALLER_VERSION)
    denied = edge_detail(snap, EMPTY, "reviews", "details", since=NOW - 60, now=NOW)
    assert denied.authz_allowed is False
    [verdict] = denied.authz
    assert "ALLOW policies select details" in verdict.reason and denied.authz_note == "GET / from reviews"
    root = edge_detail(snap, EMPTY, "productpage", "details", since=NOW - 60, now=NOW)
    assert root.authz_allowed is False  # its rule allows /details/* and /health only
    allowed = edge_detail(snap, EMPTY, "productpage", "details", since=NOW - 60, now=NOW, request=("GET", "/details/0"))
    assert allowed.authz_allowed is True and allowed.authz[0].policy == "default/details-from-productpage"
    assert allowed.authz_request == "GET /details/0"
    plain = edge_detail(snap, EMPTY, "productpage", "details", since=NOW - 60, now=NOW)
    assert plain.routes == () and "no VirtualService routes details" in plain.route_note
    # sourceLabels: reviews v2's calls get both rules, reviews v1's only the catch-all.
    v2 = edge_detail(snap, EMPTY, "reviews", "ratings", since=NOW - 60, now=NOW, source_version="v2")
    assert [r.name for r in v2.routes] == ["from-reviews-v2", "rest"] and v2.routes[0].extra == {"timeout": "2s"}
    v1 = edge_detail(snap, EMPTY, "reviews", "ratings", since=NOW - 60, now=NOW, source_version="v1")
    assert [r.name for r in v1.routes] == ["rest"]


class _Query:
    """What the handlers read of a request: its query parameters."""

    def __init__(self, **query: str):
        self.query = query


def test_the_routes_read_the_query_and_refuse_what_they_cannot_answer():
    from meshcore.controlplane import dashboard_api
    from meshcore.errors import BadRequest, Unavailable
    from meshcore.observe.collector import MeshCollector

    collector = MeshCollector(lambda: [], interval=5.0)
    snap = snapshot("traffic/reviews-destination-rule.yaml")
    d = dashboard_api.service(collector, lambda: snap, _Query(name="reviews", version="v3", since="5m"))
    assert [i.id for i in d.instances] == ["reviews-v3"] and d.since_seconds == 300 and d.figures.points == 0
    e = dashboard_api.edge(collector, lambda: snap, _Query(source="reviews", destination="ratings", path="/ratings/0"))
    assert e.authz_request == "GET /ratings/0" and e.authz_allowed is True and e.destination_rule is None
    with pytest.raises(BadRequest, match="give name="):
        dashboard_api.service(collector, lambda: snap, _Query())
    with pytest.raises(BadRequest, match="give source=... and destination="):
        dashboard_api.edge(collector, lambda: snap, _Query())
    with pytest.raises(BadRequest, match="a path starting with /"):
        dashboard_api.edge(collector, lambda: snap, _Query(source="reviews", destination="ratings", path="x"))
    with pytest.raises(Unavailable, match="no mesh snapshot yet"):
        dashboard_api.service(collector, lambda: None, _Query(name="reviews"))


def test_denials_name_the_callers_and_policies_the_agents_counted():
    page = labels(service="productpage")
    gw = labels(source="ingress-gateway", service="productpage", policy="allow/no-rule-matched")
    other = labels(source="reviews", service="productpage", policy="default/deny-reviews")
    elsewhere = labels(source="reviews", service="details", policy="default/x")
    history = history_of({
        "policy_denied": [(NOW - 10, {page: 1.0}), (NOW - 5, {page: 3.0})],
        "policy_denied_by_caller": [(NOW - 10, {gw: 1.0, other: 0.0, elsewhere: 9.0}),
                                    (NOW - 5, {gw: 2.0, other: 1.0, elsewhere: 9.0})],
    })
    d = service_detail(snapshot(), history, "productpage", since=NOW - 900, now=NOW).denials
    assert [(c.source, c.policy, c.per_second, c.estimated_total) for c in d.callers] == [
        ("ingress-gateway", "allow/no-rule-matched", 1.5, 10.0), ("reviews", "default/deny-reviews", 0.5, 5.0)]
    assert "as the agents count them from Envoy's access log" in d.note
    unknown = labels(source="unknown", service="productpage", policy="allow/no-rule-matched")
    blind = service_detail(snapshot(), history_of({"policy_denied_by_caller": [(NOW - 5, {unknown: 1.0})]}),
                           "productpage", since=NOW - 900, now=NOW).denials
    assert blind.per_second is None and "callers are unknown" in blind.note


def test_a_gateway_shows_the_gateways_selecting_it_and_the_virtual_services_bound_to_them():
    d = service_detail(snapshot("policies/bookinfo-gateway.yaml"), EMPTY, "ingress-gateway", since=NOW - 60, now=NOW)
    assert d.kind == "gateway" and [i.kind for i in d.instances] == ["ingress-gateway"]
    assert [(r.kind, r.name, r.why, r.detail) for r in d.resources] == [
        ("Gateway", "bookinfo-gateway", "selects ingress-gateway", "hosts bookinfo.example.com"),
        ("VirtualService", "bookinfo", "gateways: default/bookinfo-gateway", "hosts bookinfo.example.com")]
