"""The metrics collector: signals from two scrapes (pure), and the scrape loop against real HTTP servers."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.errors import ConfigError
from meshcore.observe._proxy_stats import parse_proxy_stats
from meshcore.observe.collector import MeshCollector, Scrape, ScrapeTarget, ca_signals, scrape_url, signals_from_scrapes
from meshcore.observe.signals import SIGNAL_LABELS, labels

DATA = Path(__file__).parent / "data"
BOUNDS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000)


def _hist(name: str, label: str, key: str, observations: dict[float, int]) -> list[str]:
    """Cumulative Envoy-style histogram lines: ``observations`` maps a bucket bound to requests in it."""
    lines, running = [f"# TYPE {name} histogram"], 0
    for le in BOUNDS:
        running += observations.get(le, 0)
        lines.append(f'{name}_bucket{{{label}="{key}",le="{le}"}} {running}')
    lines.append(f'{name}_bucket{{{label}="{key}",le="+Inf"}} {running}')
    lines += [f'{name}_sum{{{label}="{key}"}} 0', f'{name}_count{{{label}="{key}"}} {running}']
    return lines


def envoy_text(clusters: dict | None = None, listeners: dict | None = None, denied: dict | None = None,
               endpoints: dict | None = None, gateway: dict | None = None) -> str:
    """Envoy 1.40 ``/stats/prometheus`` text with the families the collector reads.

    ``clusters``: name -> dict(total, errors, hist, pending_overflow, cx_overflow, retry_limit);
    ``listeners``: HCM stat prefix -> dict(total, errors, hist); ``denied``: inbound prefix -> count;
    ``endpoints``: cluster -> {address: (total, errors)} (per-endpoint stats); ``gateway``: a mesh gateway's
    cluster name (as its config names it) -> (connections, connect failures, refused for no healthy endpoint
    [, bytes received, bytes sent]),
    spelled as Envoy's tag extraction prints it (a dot in the name ends the cluster tag)."""
    out: list[str] = []
    for name, eps in (endpoints or {}).items():
        lab = f'envoy_cluster_name="{name.replace(":", "_")}"'
        out += ["# TYPE envoy_cluster_endpoint_rq_total counter"] + [
            f'envoy_cluster_endpoint_rq_total{{{lab},envoy_endpoint_address="{a}"}} {t}' for a, (t, _) in eps.items()]
        out += ["# TYPE envoy_cluster_endpoint_rq_error counter"] + [
            f'envoy_cluster_endpoint_rq_error{{{lab},envoy_endpoint_address="{a}"}} {e}' for a, (_, e) in eps.items()]
        out += ["# TYPE envoy_cluster_endpoint_rq_success counter"] + [
            f'envoy_cluster_endpoint_rq_success{{{lab},envoy_endpoint_address="{a}"}} {t - e}' for a, (t, e) in eps.items()]
    for name, counts in (gateway or {}).items():
        head, dot, dc = name.replace(":", "_").partition(".")
        infix = f"{dc}_" if dot else ""
        for counter, value in zip(("upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_none_healthy",
                                   "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total"), counts):
            out += [f"# TYPE envoy_cluster_{infix}{counter} counter",
                    f'envoy_cluster_{infix}{counter}{{envoy_cluster_name="{head}"}} {value}']
    for name, c in (clusters or {}).items():
        lab = f'envoy_cluster_name="{name}"'
        out += ["# TYPE envoy_cluster_upstream_rq_total counter", f"envoy_cluster_upstream_rq_total{{{lab}}} {c['total']}",
                "# TYPE envoy_cluster_upstream_rq_xx counter",
                f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",{lab}}} {c["total"] - c.get("errors", 0)}',
                f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",{lab}}} {c.get("errors", 0)}',
                "# TYPE envoy_cluster_upstream_rq_pending_overflow counter",
                f"envoy_cluster_upstream_rq_pending_overflow{{{lab}}} {c.get('pending_overflow', 0)}",
                "# TYPE envoy_cluster_upstream_cx_overflow counter",
                f"envoy_cluster_upstream_cx_overflow{{{lab}}} {c.get('cx_overflow', 0)}",
                "# TYPE envoy_cluster_upstream_rq_retry_limit_exceeded counter",
                f"envoy_cluster_upstream_rq_retry_limit_exceeded{{{lab}}} {c.get('retry_limit', 0)}"]
        out += _hist("envoy_cluster_upstream_rq_time", "envoy_cluster_name", name, c.get("hist", {}))
    for prefix, l in (listeners or {}).items():
        lab = f'envoy_http_conn_manager_prefix="{prefix}"'
        out += ["# TYPE envoy_http_downstream_rq_total counter", f"envoy_http_downstream_rq_total{{{lab}}} {l['total']}",
                "# TYPE envoy_http_downstream_rq_xx counter",
                f'envoy_http_downstream_rq_xx{{envoy_response_code_class="5",{lab}}} {l.get("errors", 0)}']
        out += _hist("envoy_http_downstream_rq_time", "envoy_http_conn_manager_prefix", prefix, l.get("hist", {}))
    for prefix, n in (denied or {}).items():
        out += ["# TYPE envoy_http_rbac_allow_denied counter",
                f'envoy_http_rbac_allow_denied{{envoy_rbac_http_prefix="authz",envoy_http_conn_manager_prefix="{prefix}"}} {n}']
    # Families are merged by the parser only when adjacent; keep each name's lines together.
    return _group(out)


def _group(lines: list[str]) -> str:
    families: dict[str, list[str]] = {}
    order: list[str] = []
    current = ""
    for line in lines:
        if line.startswith("# TYPE"):
            current = line.split()[2]
            if current not in families:
                families[current] = [line]
                order.append(current)
            continue
        families[current].append(line)
    return "\n".join(line for name in order for line in families[name]) + "\n"


PROXIES = [
    ScrapeTarget("n1", scrape_url(admin="127.0.0.1:1"), (("productpage-v1", "productpage"),), True, True),
    ScrapeTarget("n2", scrape_url(admin="127.0.0.1:2"), (("ratings-v1", "ratings"),), True, False),  # not ACKed
    ScrapeTarget("n3", scrape_url(admin="127.0.0.1:3"), (("details-v1", "details"),), True, False),  # build failed
    ScrapeTarget("n4"),  # a catalog node with no Envoy yet
]


def _scrape(text: str, at: float) -> Scrape:
    return Scrape(parse_proxy_stats(text), at)


def test_edges_and_services_from_two_scrapes():
    # productpage (n1) calls ratings twice over (two source clusters would not exist; one cluster + subset).
    before = envoy_text(clusters={"outbound_ratings|productpage": {"total": 100, "errors": 5, "hist": {10: 100}},
                                  "outbound_details|productpage": {"total": 50, "hist": {5: 50}}})
    after = envoy_text(clusters={"outbound_ratings|productpage": {"total": 140, "errors": 15, "hist": {10: 130, 500: 10},
                                                                   "pending_overflow": 3, "cx_overflow": 1, "retry_limit": 2},
                                 "outbound_details|productpage": {"total": 50, "hist": {5: 50}}})
    s = signals_from_scrapes({"n1": _scrape(before, 10.0)}, {"n1": _scrape(after, 12.0)}, PROXIES, at=1000.0)
    assert s.at == 1000.0
    edge = labels(source="productpage", destination="ratings")
    assert s.get("edge_request_rate")[edge] == pytest.approx(20.0)
    assert s.get("edge_error_rate")[edge] == pytest.approx(10 / 40)
    # 30 of 40 in (5, 10], 10 in (250, 500]: rank 39.6 lies in the last bucket.
    assert s.get("edge_p99_ms")[edge] == pytest.approx(250 + 250 * (39.6 - 30) / 10)
    idle = labels(source="productpage", destination="details")
    assert s.get("edge_request_rate")[idle] == 0.0
    assert idle not in s.get("edge_error_rate") and idle not in s.get("edge_p99_ms")
    svc = labels(service="ratings")
    assert s.get("request_rate")[svc] == pytest.approx(20.0)
    assert s.get("error_rate")[svc] == pytest.approx(0.25)
    assert s.get("circuit_breaker_overflow")[svc] == pytest.approx(2.0)  # (3 + 1) over 2 s
    assert s.get("retry_exhausted")[svc] == pytest.approx(1.0)
    assert s.get("circuit_breaker_overflow")[labels(service="details")] == 0.0
    assert s.get("request_rate")[labels(service="details")] == 0.0
    assert labels(service="details") not in s.get("error_rate")


def test_service_p99_merges_histograms_of_every_caller():
    text = lambda n: envoy_text(clusters={"outbound_ratings|reviews": {"total": n, "hist": {1: n}}})  # noqa: E731
    slow = lambda n: envoy_text(clusters={"outbound_ratings|productpage": {"total": n, "hist": {1000: n}}})  # noqa: E731
    prev = {"a": _scrape(text(0), 0.0), "b": _scrape(slow(0), 0.0)}
    cur = {"a": _scrape(text(98), 1.0), "b": _scrape(slow(2), 1.0)}
    s = signals_from_scrapes(prev, cur, PROXIES, at=1.0)
    svc = labels(service="ratings")
    assert s.get("request_rate")[svc] == pytest.approx(100.0)
    # 98 fast + 2 slow: the 99th percentile (rank 99) lies in the (500, 1000] bucket.
    assert s.get("p99_ms")[svc] == pytest.approx(500 + 500 * (99 - 98) / 2)
    assert s.get("edge_p99_ms")[labels(source="reviews", destination="ratings")] == pytest.approx(0.5 + 0.5 * 0.99)


def test_service_without_mesh_callers_uses_its_inbound_listener_and_policy_denials():
    before = envoy_text(listeners={"inbound_productpage-v1": {"total": 10, "hist": {25: 10}}},
                        denied={"inbound_productpage-v1": 4})
    after = envoy_text(listeners={"inbound_productpage-v1": {"total": 30, "errors": 2, "hist": {25: 30}}},
                       denied={"inbound_productpage-v1": 14})
    s = signals_from_scrapes({"n1": _scrape(before, 0.0)}, {"n1": _scrape(after, 5.0)}, PROXIES, at=5.0)
    svc = labels(service="productpage")
    assert s.get("request_rate")[svc] == pytest.approx(4.0)
    assert s.get("error_rate")[svc] == pytest.approx(0.1)
    assert 10 < s.get("p99_ms")[svc] <= 25
    assert s.get("policy_denied")[svc] == pytest.approx(2.0)


def test_recorded_envoy_stats_count_each_rbac_denial_once():
    stats = parse_proxy_stats((DATA / "envoy-1.40-n1-stats.prom").read_text())
    # 19 POSTs denied by the ALLOW stage; per-rule (`..._0__allowed`) and shadow counters are not denials.
    assert stats.denied == {"inbound_productpage-v1": 19.0}
    assert set(stats.inbound) == {"inbound_productpage-v1", "inbound_reviews-v1"}
    assert stats.inbound["inbound_productpage-v1"].total == 41
    assert set(stats.overflow) == {"outbound_details|productpage", "outbound_reviews|productpage"}
    assert stats.retry_exhausted["outbound_reviews|productpage"] == 0
    # Nothing happened between these two identical scrapes: every rate is 0 and nothing is divided by zero.
    s = signals_from_scrapes({"n1": Scrape(stats, 0.0)}, {"n1": Scrape(stats, 1.0)}, PROXIES, at=1.0)
    assert s.get("policy_denied") == {labels(service="productpage"): 0.0}
    assert s.get("edge_request_rate")[labels(source="productpage", destination="reviews")] == 0.0
    assert not s.get("edge_error_rate")


def test_counter_reset_counts_from_zero():
    before = envoy_text(clusters={"outbound_ratings|reviews": {"total": 500, "hist": {1: 500}, "retry_limit": 9}})
    after = envoy_text(clusters={"outbound_ratings|reviews": {"total": 6, "hist": {1: 6}, "retry_limit": 1}})
    s = signals_from_scrapes({"n": _scrape(before, 0.0)}, {"n": _scrape(after, 2.0)}, PROXIES, at=2.0)
    assert s.get("edge_request_rate")[labels(source="reviews", destination="ratings")] == pytest.approx(3.0)
    assert s.get("retry_exhausted")[labels(service="ratings")] == pytest.approx(0.5)


def test_proxy_out_of_sync_and_extra_signals():
    extra = {"ca_root_expiry_seconds": {(): 86400.0}}
    s = signals_from_scrapes({}, {}, PROXIES, at=1.0, extra=extra)
    assert s.get("proxy_out_of_sync") == {labels(node="n1"): 0.0, labels(node="n2"): 1.0, labels(node="n3"): 1.0}
    assert s.get("ca_root_expiry_seconds") == {(): 86400.0}
    assert not s.get("request_rate")  # one scrape is not a rate
    with pytest.raises(KeyError):
        signals_from_scrapes({}, {}, PROXIES, at=1.0, extra={"nonsense": {}})


def test_every_signal_name_is_produced():
    before = envoy_text(clusters={"outbound_ratings|productpage": {"total": 0}},
                        listeners={"inbound_productpage-v1": {"total": 0}}, denied={"inbound_productpage-v1": 0},
                        gateway={"mesh_gateway:datacenter:dc2": (0, 0, 0)})
    after = envoy_text(clusters={"outbound_ratings|productpage": {"total": 4, "errors": 1, "hist": {5: 4}}},
                       listeners={"inbound_productpage-v1": {"total": 2, "hist": {5: 2}}}, denied={"inbound_productpage-v1": 1},
                       gateway={"mesh_gateway:datacenter:dc2": (3, 1, 0)}) + _denied_by_caller(
        {("unknown", "productpage", "allow/no-rule-matched"): 1})
    extra = {"cert_expiry_seconds": {labels(spiffe_id="spiffe://x/ns/default/sa/a", node="n1"): 10.0},
             "cert_life_left_ratio": {labels(spiffe_id="spiffe://x/ns/default/sa/a", node="n1"): 0.1},
             "ca_root_expiry_seconds": {(): 5.0},
             "thread_restarts": {labels(thread="mesh-build"): 0.0}, "resources_rejected": {labels(source="dir x"): 0.0},
             "catalog_holding": {labels(source="files x"): 0.0}, "store_suspect": {labels(source="dir x"): 0.0}}
    s = signals_from_scrapes({"n1": _scrape(before, 0)}, {"n1": _scrape(after, 1)}, PROXIES, at=1, extra=extra,
                             unreachable={"n1": False})
    assert set(s.values) == set(SIGNAL_LABELS)
    for name, entries in s.values.items():
        for key in entries:
            assert tuple(k for k, _ in key) == tuple(sorted(SIGNAL_LABELS[name])), (name, key)


def test_scrape_url_prefers_the_agents_merged_endpoint():
    assert scrape_url("http://10.0.0.1:15090/metrics", "127.0.0.1:19000") == "http://10.0.0.1:15090/metrics"
    assert scrape_url("", "127.0.0.1:19000") == "http://127.0.0.1:19000/stats/prometheus"
    assert scrape_url() == ""


def test_ca_signals_from_a_real_ca(tmp_path):
    ca = CertificateAuthority.open(tmp_path / "ca", kek=b"k" * 32, leaf_ttl=timedelta(hours=2))
    for node, sa in (("n1", "productpage"), ("gone", "old")):
        sid = f"spiffe://cluster.local/ns/default/sa/{sa}"
        ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid, node=node)
    now = time.time()
    out = ca_signals(ca, now, nodes={"n1"})
    [(key, left)] = out["cert_expiry_seconds"].items()
    assert dict(key) == {"spiffe_id": "spiffe://cluster.local/ns/default/sa/productpage", "node": "n1"}
    assert 2 * 3600 - 600 < left <= 2 * 3600 + 600
    assert len(ca_signals(ca, now)["cert_expiry_seconds"]) == 2
    assert out["ca_root_expiry_seconds"][()] > 5 * 365 * 86400


def test_an_expired_certificate_stays_in_the_signals_until_renewed(tmp_path):
    """Finding 13: the expiring alert must not resolve when the certificate expires, and its threshold is
    relative to the lifetime (2-minute leaves are not 'expiring' all their life)."""
    from datetime import datetime, timezone

    from meshcore.observe.alerts import AlertEvaluator, effective_rules
    from meshcore.observe.signals import Signals

    class Clock:
        now = datetime.now(timezone.utc)

        def __call__(self):
            return self.now

    clock = Clock()
    ca = CertificateAuthority.open(tmp_path / "ca", kek=b"k" * 32, leaf_ttl=timedelta(minutes=2), clock=clock)
    sid = "spiffe://cluster.local/ns/default/sa/productpage"
    ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid, node="n1")
    key = labels(spiffe_id=sid, node="n1")
    rules = [r for r in effective_rules([]) if r.name == "certificate-expiring"]
    evaluator = AlertEvaluator(rules)

    def firing(at: float) -> bool:
        values = ca_signals(ca, at, nodes={"n1"}, identities={(sid, "n1")})
        return any(a.state == "firing" for a in evaluator.evaluate(Signals(at=at, values=values)))

    t0 = clock.now.timestamp()
    assert not firing(t0)  # fresh: a 2-minute leaf is not "expiring" (the old fixed 2 h threshold fired here)
    assert not firing(t0 + 60)  # half its life left: renewal is due, no alarm yet
    assert firing(t0 + 110)  # under a quarter of its life left and not renewed
    clock.now += timedelta(minutes=5)  # it expired, never renewed
    values = ca_signals(ca, clock.now.timestamp(), nodes={"n1"}, identities={(sid, "n1")})
    assert values["cert_expiry_seconds"][key] < 0 and values["cert_life_left_ratio"][key] < 0
    assert firing(clock.now.timestamp())  # still firing: expiry does not resolve it
    # the service left the node: its last certificate expiring is no alarm
    assert key not in ca_signals(ca, clock.now.timestamp(), nodes={"n1"}, identities=set())["cert_life_left_ratio"]
    ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid, node="n1")  # renewed
    assert not firing(clock.now.timestamp())


# --- the loop, against real HTTP servers on loopback -------------------------------------------

class _StatsServer:
    """A loopback HTTP server answering ``/stats/prometheus`` with whatever text it is given."""

    def __init__(self):
        self.text = envoy_text()
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = owner.text.encode()
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.admin = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stats_server():
    s = _StatsServer()
    yield s
    s.close()


def test_collector_scrapes_records_history_and_notifies(stats_server):
    proxies = [ScrapeTarget("n1", scrape_url(admin=stats_server.admin), (("productpage-v1", "productpage"),),
                            True, True),
               ScrapeTarget("dead", scrape_url(admin="127.0.0.1:9"), (), True, True)]
    clock = {"t": 1000.0}
    collector = MeshCollector(lambda: proxies, interval=1.0, history=3.0, clock=lambda: clock["t"], timeout=1.0)
    seen = []
    unsubscribe = collector.subscribe(seen.append)
    try:
        assert collector.latest() is None
        for i, total in enumerate((0, 10, 30, 60, 100)):
            stats_server.text = envoy_text(clusters={"outbound_ratings|productpage": {"total": total, "hist": {5: total}}})
            clock["t"] = 1000.0 + i
            collector.collect_once()
        assert "dead" in collector.errors and "127.0.0.1:9" in collector.errors["dead"]
        latest = collector.latest()
        assert latest is not None and latest.at == 1004.0
        assert latest.get("edge_request_rate")[labels(source="productpage", destination="ratings")] > 0
        points = collector.history("edge_request_rate")
        assert [t for t, _ in points] == [1001.0, 1002.0, 1003.0, 1004.0]  # ring buffer: 3 s / 1 s + 1 entries
        assert [t for t, _ in collector.history("request_rate", since=1003.0)] == [1003.0, 1004.0]
        assert len(seen) == 5 and seen[-1] is latest
        unsubscribe()
        collector.collect_once()
        assert len(seen) == 5
        with pytest.raises(KeyError):
            collector.history("nonsense")
    finally:
        collector.stop()


def test_failed_scrape_keeps_the_previous_one_for_the_next_rate(stats_server):
    proxies = [ScrapeTarget("n1", scrape_url(admin=stats_server.admin), (), True, True)]
    ticks = itertools.count(0.0, 0.5)
    collector = MeshCollector(lambda: proxies, interval=1.0, monotonic=lambda: next(ticks), timeout=1.0)
    edge = labels(source="productpage", destination="ratings")
    try:
        stats_server.text = envoy_text(clusters={"outbound_ratings|productpage": {"total": 0}})
        collector.collect_once()
        stats_server.status = 503
        stats_server.text = "not prometheus text {"
        failed = collector.collect_once()
        assert "n1" in collector.errors
        assert edge not in failed.get("edge_request_rate")
        stats_server.status = 200
        stats_server.text = envoy_text(clusters={"outbound_ratings|productpage": {"total": 40, "hist": {5: 40}}})
        ok = collector.collect_once()
        assert collector.errors == {}
        assert ok.get("edge_request_rate")[edge] > 0
    finally:
        collector.stop()


def test_collector_loop_runs_on_its_own(stats_server):
    proxies = [ScrapeTarget("n1", scrape_url(admin=stats_server.admin), (), True, True)]
    collector = MeshCollector(lambda: proxies, interval=0.1, history=10).start()
    try:
        deadline = time.monotonic() + 10
        while len(collector.history("proxy_out_of_sync")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(collector.history("proxy_out_of_sync")) >= 3
    finally:
        collector.stop()


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="interval"):
        MeshCollector(lambda: [], interval=0)
    with pytest.raises(ConfigError, match="history"):
        MeshCollector(lambda: [], interval=10, history=5)


def test_a_missed_scrape_carries_the_last_rates_for_a_few_intervals(stats_server):
    proxies = [ScrapeTarget("n1", scrape_url(admin=stats_server.admin), (), True, True)]
    now = {"t": 0.0}
    collector = MeshCollector(lambda: proxies, interval=1.0, monotonic=lambda: now["t"], timeout=1.0)
    edge = labels(source="productpage", destination="ratings")
    try:
        for total in (0, 10):
            stats_server.text = envoy_text(clusters={"outbound_ratings|productpage": {"total": total}})
            collector.collect_once()
            now["t"] += 1.0
        assert collector.latest().get("edge_request_rate")[edge] == pytest.approx(10.0)
        stats_server.status = 500
        carried = collector.collect_once()
        assert "n1" in collector.errors
        assert carried.get("edge_request_rate")[edge] == pytest.approx(10.0)
        now["t"] += 5.0  # longer than CARRY_OVER_INTERVALS intervals without a good scrape
        assert edge not in collector.collect_once().get("edge_request_rate")
    finally:
        collector.stop()


def test_catalog_address_keeps_the_catalog_host_and_only_the_announced_port():
    from meshcore.observe.collector import catalog_address

    assert catalog_address("10.0.0.5:15090", "10.0.0.5") == "10.0.0.5:15090"
    assert catalog_address("0.0.0.0:15090", "10.0.0.5") == "10.0.0.5:15090"
    assert catalog_address("[::]:15090", "fd00::5") == "[fd00::5]:15090"
    for announced in ("127.0.0.1:15090", "169.254.169.254:80", "evil.example:80", "10.0.0.5:0",
                      "10.0.0.5:99999", "10.0.0.5", "10.0.0.5:80/x", "u@10.0.0.5:80", ""):
        assert catalog_address(announced, "10.0.0.5") == "", announced
    assert catalog_address("10.0.0.5:15090", None) == ""  # a node not in the catalog: nothing


def _denied_by_caller(counts: dict[tuple[str, str, str], int]) -> str:
    """The agent's ``meshcore_policy_denied_total`` lines (meshcore.agent._series.policy_denied_family)."""
    lines = ["# HELP meshcore_policy_denied_total Requests denied.", "# TYPE meshcore_policy_denied_total counter"]
    lines += [f'meshcore_policy_denied_total{{source_service="{s}",destination_service="{d}",policy="{p}"}} {n}'
              for (s, d, p), n in counts.items()]
    return "\n".join(lines) + "\n"


def test_denials_per_caller_come_from_the_agents_counts():
    key = ("ingress-gateway", "productpage", "allow/no-rule-matched")
    other = ("reviews", "productpage", "default/deny-reviews")
    before = envoy_text(denied={"inbound_productpage-v1": 4}) + _denied_by_caller({key: 4})
    after = envoy_text(denied={"inbound_productpage-v1": 14}) + _denied_by_caller({key: 9, other: 5})
    stats = parse_proxy_stats(after)
    assert stats.denied_by == {key: 9.0, other: 5.0}
    s = signals_from_scrapes({"n1": _scrape(before, 0.0)}, {"n1": _scrape(after, 5.0)}, PROXIES, at=5.0)
    assert s.get("policy_denied")[labels(service="productpage")] == pytest.approx(2.0)
    assert s.get("policy_denied_by_caller") == {
        labels(source="ingress-gateway", service="productpage", policy="allow/no-rule-matched"): pytest.approx(1.0),
        labels(source="reviews", service="productpage", policy="default/deny-reviews"): pytest.approx(1.0)}
