"""The dashboard's JSON views (pure) and its static files."""

from __future__ import annotations

from meshcore.api.dashboard import CollectorState, DashboardSummary, SeriesResponse
from meshcore.api.operator import GatewayStatus, ProxyStatus, ServiceStatus
from meshcore.dashboard import STATIC_FILES, build_summary, health, read_static, series_view
from meshcore.observe.signals import Signals, labels

PROXIES = [
    ProxyStatus(node="n1", connected=True, synced=True, version="v1",
                services=(ServiceStatus("reviews", "reviews-v1", "spiffe://td/ns/default/sa/reviews", True),)),
    ProxyStatus(node="gw", connected=True, synced=False,
                gateways=(GatewayStatus("ingress-gateway", "gw-1", "spiffe://td/ns/default/sa/gw", True, "ingress"),)),
]


def test_health_thresholds():
    assert health(0.0, None) == "idle"
    assert health(5.0, 0.0) == "ok"
    assert health(5.0, 0.01) == "warning"
    assert health(5.0, 0.0, troubles=0.2) == "warning"
    assert health(5.0, 0.05) == "critical"


def test_summary_from_signals():
    sig = Signals(at=100.0, values={
        "request_rate": {labels(service="reviews"): 10.0},
        "error_rate": {labels(service="reviews"): 0.1},
        "p99_ms": {labels(service="reviews"): 42.0},
        "edge_request_rate": {labels(source="ingress-gateway", destination="reviews"): 10.0},
        "edge_error_rate": {labels(source="ingress-gateway", destination="reviews"): 0.1},
        "retry_exhausted": {labels(service="reviews"): 0.5},
    })
    certs = [{"spiffe_id": "spiffe://td/ns/default/sa/reviews", "node": "n1", "not_before": 0.0, "not_after": 1000.0},
             {"spiffe_id": "spiffe://td/ns/default/sa/old", "node": "n1", "not_before": 0.0, "not_after": 900.0}]
    s = build_summary(sig, PROXIES, certs, now=850.0, trust_domain="td",
                      collector=CollectorState(interval_seconds=5.0, errors={"gw": "timed out"}))
    services = {x.name: x for x in s.services}
    assert services["reviews"].health == "critical" and services["reviews"].retry_exhausted == 0.5
    assert services["ingress-gateway"].kind == "gateway"
    [edge] = s.edges
    assert edge.health == "critical" and edge.p99_ms is None
    assert [p.state for p in s.proxies] == ["synced", "pending"]
    assert s.proxies[1].scrape_error == "timed out"
    assert [c.spiffe_id.rsplit("/", 1)[1] for c in s.certificates] == ["old", "reviews"]
    assert s.certificates[0].state == "expiring"
    assert s.totals.rps == 10.0 and s.totals.error_rate == 0.1 and s.totals.proxies_synced == 1
    assert s.collector.signals_at == 100.0 and s.collector.interval_seconds == 5.0
    empty = build_summary(None, [], [], now=1.0, trust_domain="td", collector=CollectorState())
    assert empty.services == () and empty.totals.error_rate is None and empty.collector.signals_at is None


def test_summary_wire_form_round_trips_and_keeps_nulls():
    """The page reads this JSON: idle figures stay null (not 0, not absent) and decoding gives the same value."""
    sig = Signals(at=5.0, values={"request_rate": {labels(service="reviews"): 2.0}})
    s = build_summary(sig, PROXIES, [], now=6.0, trust_domain="td", collector=CollectorState())
    wire = s.to_json()
    row = next(r for r in wire["services"] if r["name"] == "reviews")
    assert row["error_rate"] is None and row["p99_ms"] is None and row["rps"] == 2.0
    assert wire["ca_root_expires_in_seconds"] is None and wire["proxies"][0]["services"] == ["reviews"]
    assert DashboardSummary.from_json(wire) == s


def test_series_view_filters_by_label():
    a, b = labels(service="a"), labels(service="b")
    view = series_view("request_rate", [(1.0, {a: 1.0, b: 2.0}), (2.0, {a: 3.0})], {"service": "a"})
    assert view.to_json()["series"] == [{"labels": {"service": "a"}, "points": [[1.0, 1.0], [2.0, 3.0]]}]
    assert view.to_json()["labels"] == ["service"]
    assert SeriesResponse.from_json(view.to_json()) == view


def test_every_static_file_ships():
    for name in STATIC_FILES:
        body, ctype = read_static(name)
        assert body and ctype
    assert b"/dashboard/app.js" in read_static("index.html")[0]


def _version_edge(src: str, sv: str, sdc: str, dst: str, dv: str, ddc: str, gateway: str = ""):
    return labels(source=src, source_version=sv, source_datacenter=sdc, destination=dst, destination_version=dv,
                  destination_datacenter=ddc, gateway=gateway)


def test_summary_has_the_graph_by_version_with_datacenters_and_gateways():
    """The page's "Versions" view: one row per version edge (idle ones too); service edges name their
    datacenters and, across datacenters, the gateways with their connection figures (dc2's gw2 is not
    scraped by this control plane: listed without figures)."""
    from meshcore.api.operator import GatewayStatus

    to_store = _version_edge("web", "v1", "dc1", "store", "v3", "dc2", "gw1")
    direct, idle = _version_edge("web", "v1", "dc1", "api", "v1", "dc1"), _version_edge("web", "v1", "dc1", "api", "v2", "dc1")
    route = labels(gateway="gw1", datacenter="dc1", service="", destination_datacenter="dc2")
    sig = Signals(at=10.0, values={
        "edge_request_rate": {labels(source="web", destination="store"): 2.0, labels(source="web", destination="api"): 3.0},
        "edge_error_rate": {labels(source="web", destination="store"): 0.5, labels(source="web", destination="api"): 0.0},
        "version_edge_request_rate": {to_store: 2.0, direct: 3.0, idle: 0.0},
        "version_edge_error_rate": {to_store: 0.5, direct: 0.0},
        "version_edge_p99_ms": {direct: 12.0},
        "gateway_connection_rate": {route: 0.5}, "gateway_connection_error_rate": {route: 0.0},
        "gateway_bytes_rate": {route: 900.0},
    })
    gateways = [ProxyStatus(node=n, gateways=(GatewayStatus("mesh-gateway", f"gw-{n}", "", True, "mesh-gateway",
                                                            datacenter=dc),)) for n, dc in (("gw1", "dc1"), ("gw2", "dc2"))]
    s = build_summary(sig, PROXIES + gateways, [], now=11.0, trust_domain="td", collector=CollectorState())
    rows = {(v.destination, v.destination_version): v for v in s.version_edges}
    assert set(rows) == {("store", "v3"), ("api", "v1"), ("api", "v2")}
    assert rows[("api", "v2")].health == "idle" and rows[("api", "v2")].rps == 0.0
    assert rows[("api", "v1")].p99_ms == 12.0 and rows[("api", "v1")].gateways == ()
    store = rows[("store", "v3")]
    assert (store.health, store.source_datacenter, store.destination_datacenter) == ("critical", "dc1", "dc2")
    assert [(h.node, h.datacenter, h.connections_per_second, h.bytes_per_second) for h in store.gateways] == [
        ("gw1", "dc1", 0.5, 900.0), ("gw2", "dc2", None, None)]
    edges = {e.destination: e for e in s.edges}
    assert (edges["store"].source_datacenter, edges["store"].destination_datacenter) == ("dc1", "dc2")
    assert [h.node for h in edges["store"].gateways] == ["gw1", "gw2"]
    assert edges["api"].destination_datacenter == "dc1" and edges["api"].gateways == ()
    wire = s.to_json()
    [store_row] = [e for e in wire["edges"] if e["destination"] == "store"]
    assert store_row["gateways"][1] == {"node": "gw2", "datacenter": "dc2", "connections_per_second": None,
                                        "connection_error_rate": None, "bytes_per_second": None}
    assert DashboardSummary.from_json(wire) == s
