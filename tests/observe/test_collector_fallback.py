"""A slow agent endpoint does not blind the collector: it falls back to Envoy's own stats through the agent,
says per proxy how current its figures are, and a proxy no source answers fires the default
"metrics unreachable" alert, which ``meshctl alerts`` shows."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.api.operator import ProxyStatus
from meshcore.cli.alerts import render_alerts
from meshcore.controlplane.dashboard_api import collector_state
from meshcore.dashboard._summary import proxies_view
from meshcore.observe.alerts import AlertEvaluator, effective_rules
from meshcore.observe.collector import MeshCollector, ScrapeTarget, default_timeout, fallback_urls
from meshcore.observe.signals import labels
from tests.observe.test_collector import envoy_text


class _Agent:
    """A VM agent stand-in: ``/metrics`` (the merged endpoint) answers after ``delay`` seconds (or 500),
    ``/stats/prometheus`` (Envoy's own, passed through) at once, unless ``envoy_down``."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.merged_status, self.envoy_down = delay, 200, False
        self.release = threading.Event()
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                owner.hits.append(self.path)
                status, body = 200, envoy_text().encode()
                if self.path == "/metrics":
                    owner.release.wait(owner.delay)
                    status = owner.merged_status
                elif self.path == "/stats/prometheus" and owner.envoy_down:
                    status, body = 503, b"envoy did not answer\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the collector gave up on this source and hung up
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.metrics = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def target(self, node: str) -> ScrapeTarget:
        return ScrapeTarget(node, self.metrics, (("productpage-v1", "productpage"),), True, True,
                            fallback_urls=fallback_urls(self.metrics))

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agents():
    made: list[_Agent] = []

    def make(delay: float = 0.0) -> _Agent:
        made.append(_Agent(delay))
        return made[-1]

    yield make
    for a in made:
        a.close()


def test_fallback_urls_stay_on_the_catalog_derived_addresses():
    assert fallback_urls("http://10.0.0.5:15090/metrics") == ("http://10.0.0.5:15090/stats/prometheus",)
    assert fallback_urls("http://10.0.0.5:15090/metrics", "10.0.0.5:19000") == (
        "http://10.0.0.5:15090/stats/prometheus",)  # through the agent only: the admin address is the VM's own
    assert fallback_urls("", "10.0.0.5:19000") == ()  # the admin address is already the first source
    assert fallback_urls() == ()


def test_timeout_follows_the_interval_unless_given():
    assert default_timeout(5.0) == 4.0 and default_timeout(30.0) == 24.0 and default_timeout(0.5) == 1.0
    assert MeshCollector(lambda: [], interval=30.0).timeout == 24.0
    assert MeshCollector(lambda: [], interval=30.0, timeout=2.5).timeout == 2.5


def test_slow_merged_endpoint_falls_back_staleness_is_shown_and_the_alert_fires(agents):
    slow, healthy, dead = agents(delay=30.0), agents(), agents(delay=30.0)
    dead.envoy_down = True
    clock = {"t": 1000.0}
    targets = [slow.target("slow"), healthy.target("healthy"), dead.target("dead")]
    collector = MeshCollector(lambda: targets, interval=1.0, history=600.0, timeout=1.0, clock=lambda: clock["t"])
    evaluator = AlertEvaluator(effective_rules([]))  # the default rules only
    try:
        started = time.monotonic()
        signals = collector.collect_once()
        assert time.monotonic() - started < 1.0 + 2.5, "a round waited longer than its timeout"
        # the slow proxy's figures came from Envoy's own stats through its agent; the dead one has none
        assert "/stats/prometheus" in slow.hits and "/stats/prometheus" not in healthy.hits
        unreachable = signals.get("metrics_unreachable")
        assert unreachable == {labels(node="slow"): 0.0, labels(node="healthy"): 0.0, labels(node="dead"): 1.0}
        fresh = collector.freshness()
        assert (fresh["healthy"].state, fresh["slow"].state, fresh["dead"].state) == ("ok", "fallback", "unreachable")
        assert fresh["slow"].source.endswith("/stats/prometheus") and "within 0.6s" in fresh["slow"].error
        assert fresh["dead"].age_seconds is None and "503" in fresh["dead"].error

        # the dashboard's view of it: the header's list and each proxy's row
        state = collector_state(collector)
        assert state.degraded == {"slow": "fallback", "dead": "unreachable"}
        status = [ProxyStatus(node=n, connected=True, synced=True) for n in ("slow", "dead", "healthy", "new")]
        rows = {r.node: r for r in proxies_view(status, state.errors, state)}
        assert rows["new"].metrics_state == ""  # not scraped (yet)
        assert (rows["slow"].metrics_state, rows["dead"].metrics_state, rows["healthy"].metrics_state) == (
            "fallback", "unreachable", "ok")
        assert rows["dead"].scrape_error

        # proxy-metrics-unreachable (for: 1m): pending first, firing a minute on, shown by `meshctl alerts`
        assert [a.state for a in evaluator.evaluate(signals) if a.name == "proxy-metrics-unreachable"] == ["pending"]
        for _ in range(2):
            clock["t"] += 31.0
            signals = collector.collect_once()
            alerts = evaluator.evaluate(signals)
        firing = [a for a in alerts if a.name == "proxy-metrics-unreachable"]
        assert [(a.state, a.labels.get("node")) for a in firing] == [("firing", "dead")]
        shown = render_alerts([a.view() for a in evaluator.active()])
        assert "proxy-metrics-unreachable" in shown and "dead" in shown and "firing" in shown, shown

        # the healthy proxy goes quiet: carried over as stale first, then unreachable
        healthy.envoy_down, healthy.merged_status = True, 500
        collector.collect_once()
        assert collector.freshness()["healthy"].state == "stale"
        deadline = time.monotonic() + 30
        while collector.freshness()["healthy"].state != "unreachable":
            assert time.monotonic() < deadline, "a proxy silent for many intervals is still called stale"
            collector.collect_once()
            time.sleep(0.2)
    finally:
        collector.stop()
