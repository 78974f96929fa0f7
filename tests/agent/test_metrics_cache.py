"""The merged /metrics does no heavy work per scrape: the series derived from Envoy's text are computed off
the scrape path (one scrape behind, at most once per min_interval), and /stats/prometheus passes Envoy's
own text through (the collector's fallback)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.agent.metrics import AgentFacts, AgentMetrics, EnvoyDerived, MetricsServer, _DerivedCache

ENVOY_TEXT = (b"# TYPE envoy_cluster_upstream_rq_xx counter\n"
              b'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="outbound:b|a"} 7\n')


@pytest.fixture
def fake_envoy():
    """An Envoy admin stand-in: /stats/prometheus answers ENVOY_TEXT, the JSON endpoints answer empty."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            body = ENVOY_TEXT if self.path.startswith("/stats/prometheus") else b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_slow_derivation_does_not_slow_the_scrapes_after_the_first(fake_envoy):
    calls: list[str] = []

    def slow(facts, envoy, admin, limits):
        calls.append(envoy)
        time.sleep(1.5)
        return EnvoyDerived(edges=b"# TYPE meshcore_test_derived gauge\nmeshcore_test_derived %d\n" % len(calls),
                            rbac=b"")

    server = MetricsServer("127.0.0.1:0", AgentMetrics(lambda: AgentFacts(node="n")), lambda: fake_envoy)
    server._derived = _DerivedCache(compute=slow, fetch_limits=lambda admin: {}, min_interval=0.0)
    server.start()
    try:
        status, first = _get(f"http://{server.address}/metrics")  # computed inline: complete from the start
        assert status == 200 and "meshcore_test_derived 1" in first and "envoy_cluster_upstream_rq_xx" in first
        started = time.monotonic()
        _, second = _get(f"http://{server.address}/metrics")
        assert time.monotonic() - started < 1.5, "the second scrape waited for the derivation"
        assert "meshcore_test_derived 1" in second  # the previous result, one scrape behind
        deadline = time.monotonic() + 30
        while "meshcore_test_derived 2" not in _get(f"http://{server.address}/metrics")[1]:
            assert time.monotonic() < deadline, "the worker never produced the next result"
            time.sleep(0.1)
    finally:
        server.stop()
    assert all("outbound:b|a" in text for text in calls)


def test_scrapes_in_a_burst_are_folded_into_one_derivation_per_min_interval():
    calls = []
    cache = _DerivedCache(compute=lambda *a: calls.append(a) or EnvoyDerived(b"", b""),
                          fetch_limits=lambda admin: {}, min_interval=60.0)
    facts = AgentFacts(node="n")
    for _ in range(20):
        cache.get(facts, ENVOY_TEXT, "127.0.0.1:1")
        cache.kick()
    time.sleep(0.3)
    cache.stop()
    assert len(calls) <= 2  # the inline first one, then at most one in the first minute


def test_stats_passthrough_serves_envoys_text_or_503(fake_envoy):
    server = MetricsServer("127.0.0.1:0", AgentMetrics(lambda: AgentFacts(node="n")), lambda: fake_envoy).start()
    try:
        assert _get(f"http://{server.address}/stats/prometheus") == (200, ENVOY_TEXT.decode())
    finally:
        server.stop()
    dead = MetricsServer("127.0.0.1:0", AgentMetrics(lambda: AgentFacts(node="n")), lambda: "127.0.0.1:1").start()
    try:
        status, body = _get(f"http://{dead.address}/stats/prometheus")
        assert status == 503 and "envoy did not answer" in body
    finally:
        dead.stop()
