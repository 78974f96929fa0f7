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
