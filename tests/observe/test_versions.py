"""The graph split by version and datacenter: per-endpoint stats parsed, edges attributed to the instance that
answered, cross-datacenter edges through mesh gateways, and the gateways' own connection figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.observe._proxy_stats import gateway_route, parse_proxy_stats, parse_proxy_stats_slow
from meshcore.xds.generate.mesh_gateway import cluster_stat_name
from meshcore.observe._versions import Directory, Workload, workload_of, workloads_of_status
from meshcore.observe.collector import Scrape, ScrapeTarget, signals_from_scrapes
from meshcore.observe.signals import labels

from .test_collector import envoy_text

REAL = Path(__file__).parent / "data" / "envoy-1.40-per-endpoint-stats.prom"

# bookinfo's reviews in three versions; web (dc1) calling store in dc2 through the gateways.
PRODUCTPAGE = Workload("productpage-1", "productpage", "v1", "dc1", addresses=("10.0.0.1:21000",))
REVIEWS = [Workload(f"reviews-{v}", "reviews", v, "dc1", addresses=(f"10.0.0.{i}:21000",))
           for i, v in ((11, "v1"), (12, "v2"), (13, "v3"))]
WEB = Workload("web-a1", "web", "v7", "dc1", addresses=("10.1.0.1:21000",))
API_DC1 = Workload("api-a2", "api", "v1", "dc1", addresses=("10.1.0.2:21000",))
API_DC2 = Workload("api-b1", "api", "v2", "dc2", addresses=("10.2.0.1:21000",))
STORE = Workload("store-b1", "store", "v3", "dc2", addresses=("10.2.0.1:21001",))
GW1 = Workload("mesh-gateway-gw1", "mesh-gateway", "", "dc1", "mesh-gateway", ("10.1.0.9:8443", "192.0.2.1:8443"))
GW2 = Workload("mesh-gateway-gw2", "mesh-gateway", "", "dc2", "mesh-gateway", ("10.2.0.9:8443", "198.51.100.7:8443"))
TARGETS = [
    ScrapeTarget("pp", instances=(("productpage-1", "productpage"),), workloads=(PRODUCTPAGE,)),
    *[ScrapeTarget(f"r{w.version}", instances=((w.id, "reviews"),), workloads=(w,)) for w in REVIEWS],
    ScrapeTarget("a1", instances=(("web-a1", "web"),), workloads=(WEB,)),
    ScrapeTarget("a2", workloads=(API_DC1,)), ScrapeTarget("b1", workloads=(API_DC2, STORE)),
    ScrapeTarget("gw1", workloads=(GW1,)), ScrapeTarget("gw2", workloads=(GW2,)),
]


def _signals(before: str, after: str, node: str, seconds: float = 2.0):
    prev = {node: Scrape(parse_proxy_stats(before), 0.0)}
    cur = {node: Scrape(parse_proxy_stats(after), seconds)}
    return signals_from_scrapes(prev, cur, TARGETS, at=seconds)


def _edge(src: str, sv: str, sdc: str, dst: str, dv: str, ddc: str, gateway: str = ""):
    return labels(source=src, source_version=sv, source_datacenter=sdc, destination=dst, destination_version=dv,
                  destination_datacenter=ddc, gateway=gateway)


def test_real_envoy_per_endpoint_stats_are_read_by_both_parsers():
    text = REAL.read_text()
    fast, slow = parse_proxy_stats(text), parse_proxy_stats_slow(text)
    assert fast == slow
    [(cluster, endpoints)] = fast.endpoints.items()
    assert cluster == "outbound_x|web"
    assert {a: (s.total, s.errors) for a, s in endpoints.items()} == {"127.0.0.1:19921": (10.0, 0.0),
                                                                       "127.0.0.1:19922": (10.0, 0.0)}


def test_gateway_clusters_are_read_in_both_spellings():
    assert gateway_route("mesh_gateway_service_store", "envoy_cluster_dc2_upstream_cx_total") == ("store", "dc2", "upstream_cx_total")
    assert gateway_route("mesh_gateway:service:store.dc2", "envoy_cluster_upstream_cx_connect_fail") == (
        "store", "dc2", "upstream_cx_connect_fail")
    assert gateway_route("mesh_gateway_datacenter_dc2", "envoy_cluster_upstream_cx_none_healthy_total") == (
        "", "dc2", "upstream_cx_none_healthy")
    assert gateway_route("outbound_store|web", "envoy_cluster_upstream_cx_total") is None
    assert gateway_route("mesh_gateway_service_store", "envoy_cluster_upstream_cx_total") is None  # no datacenter
    text = envoy_text(gateway={"mesh_gateway:service:store.dc2": (5, 1, 2, 300, 200), "mesh_gateway:datacenter:dc3": (4, 0, 0)})
    for stats in (parse_proxy_stats(text), parse_proxy_stats_slow(text)):
        assert {k: (s.total, s.errors) for k, s in stats.gateway.items()} == {("store", "dc2"): (7.0, 3.0),
                                                                             ("", "dc3"): (4.0, 0.0)}
        assert stats.gateway_bytes == {("store", "dc2"): 500.0}


def test_gateway_clusters_alt_stat_names_keep_service_datacenter_and_subset_whole():
    # what the gateways' clusters are configured with (no dot: Envoy's tag extraction keeps the name whole)
    whole = {cluster_stat_name(n): n for n in ("mesh_gateway:service:store.dc2", "mesh_gateway:service:api.dc2|v2",
                                                "mesh_gateway:datacenter:dc3")}
    assert sorted(whole) == ["mesh_gateway_datacenter_dc3", "mesh_gateway_service_api|dc2|v2",
                             "mesh_gateway_service_store|dc2"]
    assert gateway_route("mesh_gateway_service_store|dc2", "envoy_cluster_upstream_cx_total") == (
        "store", "dc2", "upstream_cx_total")
    assert gateway_route("mesh_gateway_service_api|dc2|v2", "envoy_cluster_upstream_cx_tx_bytes_total") == (
        "api", "dc2", "upstream_cx_tx_bytes_total")
    assert gateway_route("mesh_gateway_service_store|", "envoy_cluster_upstream_cx_total") is None
    text = envoy_text(gateway={"mesh_gateway_service_store|dc2": (5, 1, 2, 300, 200),
                               "mesh_gateway_service_api|dc2|v2": (3, 0, 0, 10, 20),
                               "mesh_gateway_service_api|dc2": (1, 0, 0, 1, 1)})
    assert "envoy_cluster_dc2_" not in text  # nothing moved into the sample names
    for stats in (parse_proxy_stats(text), parse_proxy_stats_slow(text)):
        assert {k: (s.total, s.errors) for k, s in stats.gateway.items()} == {("store", "dc2"): (7.0, 3.0),
                                                                             ("api", "dc2"): (4.0, 0.0)}
        assert stats.gateway_bytes == {("store", "dc2"): 500.0, ("api", "dc2"): 32.0}


def test_a_plain_cluster_is_split_by_the_version_that_answered():
    cluster = "outbound_reviews|productpage"
    before = envoy_text(clusters={cluster: {"total": 0, "hist": {}}},
                        endpoints={cluster: {"10.0.0.11:21000": (0, 0), "10.0.0.12:21000": (0, 0), "10.0.0.13:21000": (0, 0)}})
    after = envoy_text(clusters={cluster: {"total": 30, "errors": 4, "hist": {5: 26, 100: 4}}},
                       endpoints={cluster: {"10.0.0.11:21000": (20, 0), "10.0.0.12:21000": (10, 4), "10.0.0.13:21000": (0, 0)}})
    s = _signals(before, after, "pp")
    rate, errors, p99 = (s.get(f"version_edge_{n}") for n in ("request_rate", "error_rate", "p99_ms"))
    v1, v2, v3 = (_edge("productpage", "v1", "dc1", "reviews", v, "dc1") for v in ("v1", "v2", "v3"))
    assert (rate[v1], rate[v2], rate[v3]) == (10.0, 5.0, 0.0)  # over 2 s
    assert errors[v2] == pytest.approx(0.4) and errors[v1] == 0.0
    assert v3 not in errors  # idle: listed, nothing to divide
    assert not p99  # two versions shared the cluster's histogram: no per-version p99 is made up
    # the per-service edge is untouched
    assert s.get("edge_request_rate")[labels(source="productpage", destination="reviews")] == 15.0


def test_one_busy_version_gets_the_clusters_histogram():
    cluster = "outbound_reviews|productpage|v2"  # a subset cluster: only v2's instance
    before = envoy_text(clusters={cluster: {"total": 0}}, endpoints={cluster: {"10.0.0.12:21000": (0, 0)}})
    after = envoy_text(clusters={cluster: {"total": 100, "hist": {5: 100}}}, endpoints={cluster: {"10.0.0.12:21000": (100, 0)}})
    s = _signals(before, after, "pp")
    key = _edge("productpage", "v1", "dc1", "reviews", "v2", "dc1")
    assert s.get("version_edge_request_rate")[key] == 50.0
    assert s.get("version_edge_p99_ms")[key] == pytest.approx(1 + 4 * 0.99 * 100 / 100)


def test_a_cluster_without_endpoint_stats_is_one_edge_to_what_the_catalog_knows():
    ratings = "outbound_ratings|reviews"  # ratings is not in the directory: version and datacenter unknown
    before = envoy_text(clusters={ratings: {"total": 0}})
    after = envoy_text(clusters={ratings: {"total": 8, "hist": {10: 8}}})
    s = _signals(before, after, "rv2")
    key = _edge("reviews", "v2", "dc1", "ratings", "", "")
    assert s.get("version_edge_request_rate")[key] == 4.0 and key in s.get("version_edge_p99_ms")


def test_cross_datacenter_edges_through_the_local_gateway_and_direct():
    store, api = "outbound_store|web", "outbound_api|web"
    eps = {store: {"10.1.0.9:8443": (0, 0)}, api: {"10.1.0.2:21000": (0, 0), "10.1.0.9:8443": (0, 0)}}
    before = envoy_text(clusters={store: {"total": 0}, api: {"total": 0}}, endpoints=eps)
    after = envoy_text(clusters={store: {"total": 6, "errors": 3, "hist": {10: 6}}, api: {"total": 10, "hist": {10: 10}}},
                       endpoints={store: {"10.1.0.9:8443": (6, 3)},
                                  api: {"10.1.0.2:21000": (4, 0), "10.1.0.9:8443": (6, 0)}})
    s = _signals(before, after, "a1")
    rate = s.get("version_edge_request_rate")
    # store lives in dc2 only, in one version: known through gw1
    to_store = _edge("web", "v7", "dc1", "store", "v3", "dc2", "gw1")
    assert rate[to_store] == 3.0 and s.get("version_edge_error_rate")[to_store] == 0.5
    assert s.get("version_edge_p99_ms")[to_store] is not None  # the only busy edge of its cluster
    # api: the local instance directly, dc2's through gw1 (one version there: v2)
    assert rate[_edge("web", "v7", "dc1", "api", "v1", "dc1")] == 2.0
    assert rate[_edge("web", "v7", "dc1", "api", "v2", "dc2", "gw1")] == 3.0


def test_remote_mode_names_the_remote_gateway_and_its_datacenter():
    cluster = "outbound_api|web"
    before = envoy_text(clusters={cluster: {"total": 0}}, endpoints={cluster: {"198.51.100.7:8443": (0, 0)}})
    after = envoy_text(clusters={cluster: {"total": 2}}, endpoints={cluster: {"198.51.100.7:8443": (2, 0)}})
    s = _signals(before, after, "a1", seconds=1.0)
    assert s.get("version_edge_request_rate")[_edge("web", "v7", "dc1", "api", "v2", "dc2", "gw2")] == 2.0


def test_the_gateways_own_connection_figures():
    before = envoy_text(gateway={"mesh_gateway:datacenter:dc2": (10, 0, 0, 100, 50), "mesh_gateway:service:api.dc1": (0, 0, 0)})
    after = envoy_text(gateway={"mesh_gateway:datacenter:dc2": (14, 1, 1, 2100, 1050), "mesh_gateway:service:api.dc1": (0, 0, 0)})
    s = _signals(before, after, "gw1")
    rate, failed = s.get("gateway_connection_rate"), s.get("gateway_connection_error_rate")
    to_dc2 = labels(gateway="gw1", datacenter="dc1", service="", destination_datacenter="dc2")
    assert rate[to_dc2] == 2.5 and failed[to_dc2] == pytest.approx(2 / 5)  # 5 attempts, 1 refused + 1 failed
    assert s.get("gateway_bytes_rate")[to_dc2] == 1500.0  # (2000 + 1000) bytes over 2 s
    idle = labels(gateway="gw1", datacenter="dc1", service="api", destination_datacenter="dc1")
    assert rate[idle] == 0.0 and idle not in failed


def test_workloads_from_the_catalog_and_from_the_status_page_agree():
    from meshcore.api.operator import GatewayStatus, ServiceStatus
    from meshcore.catalog.model import ServiceInstance

    svc = ServiceInstance("reviews", "reviews-v2", "n1", 9080, "10.0.0.12", 21000, meta=(("version", "v2"),),
                          datacenter="dc1")
    gw = ServiceInstance("mesh-gateway", "gw-1", "gw", 8443, "10.0.0.9", 8443, kind="mesh-gateway", datacenter="dc1",
                         wan_address="198.51.100.7", wan_port=8443)
    v6 = ServiceInstance("ratings", "ratings-1", "n2", 9080, "fd00::5", 21000, datacenter="dc2")
    status = workloads_of_status(
        [ServiceStatus("reviews", "reviews-v2", "", True, inbound="10.0.0.12:21000", labels=svc.labels, datacenter="dc1"),
         ServiceStatus("ratings", "ratings-1", "", True, inbound="fd00::5:21000", datacenter="dc2")],
        [GatewayStatus("mesh-gateway", "gw-1", "", True, "mesh-gateway", datacenter="dc1",
                       addresses=workload_of(gw).addresses)])
    assert status == (workload_of(svc), workload_of(v6), workload_of(gw))
    assert workload_of(svc).version == "v2" and workload_of(v6).addresses == ("[fd00::5]:21000",)
    assert workload_of(gw).addresses == ("10.0.0.9:8443", "198.51.100.7:8443")
    directory = Directory.of([("n1", (workload_of(svc),)), ("gw", (workload_of(gw),))])
    assert directory.by_address["198.51.100.7:8443"][0] == "gw" and "mesh-gateway" not in directory.by_service


def test_a_versions_only_caller_gets_its_inbound_p99():
    """reviews v1 and v2 share productpage's cluster (no p99 of their own there); each had one caller in the
    interval, so its inbound listener's histogram is that edge's."""
    cluster = "outbound_reviews|productpage"
    v1, v2 = "10.0.0.11:21000", "10.0.0.12:21000"
    caller = [envoy_text(clusters={cluster: {"total": n, "hist": {5: n}}}, endpoints={cluster: {v1: (n, 0), v2: (n, 0)}})
              for n in (0, 10)]
    slow = [envoy_text(listeners={"inbound_reviews-v2": {"total": n, "hist": {250: n}}}) for n in (0, 10)]
    fast = [envoy_text(listeners={"inbound_reviews-v1": {"total": n, "hist": {1: n}}}) for n in (0, 10)]
    prev = {"pp": Scrape(parse_proxy_stats(caller[0]), 0.0), "rv2": Scrape(parse_proxy_stats(slow[0]), 0.0),
            "rv1": Scrape(parse_proxy_stats(fast[0]), 0.0)}
    cur = {"pp": Scrape(parse_proxy_stats(caller[1]), 2.0), "rv2": Scrape(parse_proxy_stats(slow[1]), 2.0),
           "rv1": Scrape(parse_proxy_stats(fast[1]), 2.0)}
    p99 = signals_from_scrapes(prev, cur, TARGETS, at=2.0).get("version_edge_p99_ms")
    assert p99[_edge("productpage", "v1", "dc1", "reviews", "v2", "dc1")] == pytest.approx(100 + 150 * 0.99)
    assert p99[_edge("productpage", "v1", "dc1", "reviews", "v1", "dc1")] == pytest.approx(0.5 + 0.5 * 0.99)
    # a second caller of v2 in the same interval: its inbound histogram mixes both, so neither edge gets it
    other = "outbound_reviews|web"
    web = [envoy_text(clusters={other: {"total": n, "hist": {5: n}}}, endpoints={other: {v2: (n, 0), v1: (n, 0)}})
           for n in (0, 4)]
    prev["a1"], cur["a1"] = Scrape(parse_proxy_stats(web[0]), 0.0), Scrape(parse_proxy_stats(web[1]), 2.0)
    p99 = signals_from_scrapes(prev, cur, TARGETS, at=2.0).get("version_edge_p99_ms")
    assert not p99


def test_a_gateways_subset_routes_fold_into_their_service():
    """``mesh_gateway:service:api.dc1|v2`` (a DestinationRule subset's route) comes from Envoy as
    ``envoy_cluster_dc1_v2_upstream_cx_total{envoy_cluster_name="mesh_gateway_service_api"}``."""
    assert gateway_route("mesh_gateway:service:api.dc1|v2", "envoy_cluster_upstream_cx_total") == ("api", "dc1", "upstream_cx_total")
    before = envoy_text(gateway={"mesh_gateway:service:api.dc1": (0, 0, 0, 0, 0), "mesh_gateway:service:api.dc1_v2": (0, 0, 0, 0, 0)})
    after = envoy_text(gateway={"mesh_gateway:service:api.dc1": (2, 0, 0, 10, 10), "mesh_gateway:service:api.dc1_v2": (4, 1, 0, 30, 30)})
    s = _signals(before, after, "gw1")
    route = labels(gateway="gw1", datacenter="dc1", service="api", destination_datacenter="dc1")
    assert s.get("gateway_connection_rate") == {route: 3.0} and s.get("gateway_bytes_rate")[route] == 40.0
    assert s.get("gateway_connection_error_rate")[route] == pytest.approx(1 / 6)
