"""Control plane alerting: webhooks receive Alertmanager v4 payloads (firing, then resolved) over real HTTP on
loopback, failed deliveries are retried without blocking evaluation, and the operator API serves the alerts."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshcore.controlplane._http import JsonServer, Router
from meshcore.controlplane.alerting import Alerting, add_routes, webhook_urls
from meshcore.errors import ConfigError
from meshcore.observe.signals import Signals, labels
from meshcore.resources.loader import load_documents

RULE = load_documents("""
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: ratings-errors}
spec:
  signal: error_rate
  match: {service: ratings}
  op: ">"
  threshold: 50%
  for: 2s
  summary: "{service} fails {value}"
""", "rule.yaml")
RATINGS = labels(service="ratings")


class Receiver:
    """A webhook receiver on 127.0.0.1 (free port) recording every JSON body; ``fail_first`` answers 503 first."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0):
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.delay = delay
        self.got = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(outer.delay)
                with outer.got:
                    outer.attempts += 1
                    failing = outer.attempts <= outer.fail_first
                    if not failing:
                        outer.bodies.append(json.loads(body))
                    outer.got.notify_all()
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 20.0) -> list[dict]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= count, timeout), \
                f"webhook got {len(self.bodies)} payload(s), expected {count}"
            return list(self.bodies)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make_alerting(urls, **kw) -> Alerting:
    return Alerting(lambda: RULE, urls, external_url=lambda: "http://127.0.0.1:15000", defaults=False, **kw).start()


def sig(t: float, value: float | None) -> Signals:
    return Signals(at=t, values={} if value is None else {"error_rate": {RATINGS: value}})


def test_webhook_receives_firing_then_resolved(receiver):
    alerting = make_alerting([receiver.url])
    try:
        t0 = 1_700_000_000.0
        alerting.evaluate(sig(t0, 0.9))  # pending: nothing sent
        alerting.evaluate(sig(t0 + 1, 0.9))
        assert [a.state for a in alerting.alerts()] == ["pending"]
        alerting.evaluate(sig(t0 + 2, 1.0))  # held for 2s: firing
        [firing] = receiver.wait(1)
        alerting.evaluate(sig(t0 + 3, 1.0))  # still firing: no new notification
        alerting.evaluate(sig(t0 + 4, 0.0))  # resolved
        bodies = receiver.wait(2)
    finally:
        alerting.stop()
    assert len(bodies) == 2
    assert firing["version"] == "4" and firing["status"] == "firing" and firing["receiver"] == "meshcore"
    assert firing["groupKey"] == '{}:{alertname="RatingsErrors"}' and firing["externalURL"] == "http://127.0.0.1:15000"
    [a] = firing["alerts"]
    assert a["status"] == "firing" and a["labels"] == {"service": "ratings", "alertname": "RatingsErrors",
                                                       "severity": "warning"}
    assert a["annotations"]["summary"] == "ratings fails 100%" and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert a["startsAt"] == "2023-11-14T22:13:22.000Z"
    assert a["generatorURL"] == "http://127.0.0.1:15000/v1/alerts/rules?name=ratings-errors"
    resolved = bodies[1]
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2023-11-14T22:13:24.000Z"
    assert resolved["alerts"][0]["fingerprint"] == a["fingerprint"]
    assert alerting.alerts() == []


def test_failed_deliveries_are_retried_and_never_block_evaluation():
    slow = Receiver(fail_first=2, delay=0.3)
    registry = CollectorRegistry()
    alerting = make_alerting([slow.url], registry=registry, max_backoff=0.2)
    try:
        started = time.monotonic()
        for i in range(4):
            alerting.evaluate(sig(100.0 + i, 1.0))
        evaluating = time.monotonic() - started
        [body] = slow.wait(1)
    finally:
        alerting.stop()
        slow.close()
    assert slow.attempts == 3 and body["status"] == "firing"
    assert evaluating < slow.delay * slow.attempts  # evaluation did not wait for the webhook's answers
    text = generate_latest(registry).decode()
    assert 'meshcore_alert_notifications_total{outcome="sent"} 1.0' in text
    assert 'meshcore_alerts{alertname="RatingsErrors",severity="warning",state="firing"} 1.0' in text


def test_a_webhook_that_is_down_gives_up_and_counts_it():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        dead = f"http://127.0.0.1:{s.server_address[1]}/"  # the port is closed once the server is
    registry = CollectorRegistry()
    alerting = make_alerting([dead], registry=registry, attempts=2, max_backoff=0.1)
    try:
        alerting.evaluate(sig(0.0, 1.0))
        alerting.evaluate(sig(2.0, 1.0))
        deadline = time.monotonic() + 20
        while 'outcome="failed"} 1.0' not in generate_latest(registry).decode():
            assert time.monotonic() < deadline, "the failed delivery was never counted"
            time.sleep(0.05)
    finally:
        alerting.stop()


def test_api_routes_serve_alerts_and_effective_rules():
    alerting = Alerting(lambda: RULE, [])
    alerting.evaluate(sig(10.0, 0.9))
    router = Router()
    add_routes(router, alerting=alerting)
    server = JsonServer(router, "127.0.0.1:0", name="test-alerts").start()
    try:
        def get(path):
            with urllib.request.urlopen(f"http://{server.address}{path}", timeout=10) as resp:
                return json.loads(resp.read())

        alerts = {a["name"]: a for a in get("/v1/alerts")}
        assert set(alerts) == {"ratings-errors", "high-error-rate"}  # the shipped default sees it too
        alert = alerts["ratings-errors"]
        assert set(alert) >= {"name", "severity", "state", "labels", "annotations", "value", "active_since", "fired_at"}
        assert (alert["name"], alert["state"], alert["value"], alert["fired_at"]) == ("ratings-errors", "pending", 0.9, None)
        assert alert["active_since"] == "1970-01-01T00:00:10.000Z"
        assert get("/v1/alerts?state=firing") == []
        rules = {r["name"]: r for r in get("/v1/alerts/rules")}
        assert rules["ratings-errors"]["origin"] == "AlertRule/default/ratings-errors"
        assert rules["high-error-rate"]["origin"] == "default" and len(rules) == 14
        assert [r["name"] for r in get("/v1/alerts/rules?name=ratings-errors")] == ["ratings-errors"]
        with pytest.raises(urllib.error.HTTPError) as info:
            get("/v1/alerts/rules?name=nope")
        assert info.value.code == 404
    finally:
        server.stop()


def test_webhook_urls_from_flags_and_env():
    env = {"MESHCORE_ALERT_WEBHOOKS": "http://a.example/x, https://b.example/y,,http://a.example/x"}
    assert webhook_urls(["http://c.example/z"], env) == ["http://c.example/z", "http://a.example/x", "https://b.example/y"]
    with pytest.raises(ConfigError, match="not an http"):
        webhook_urls(["ftp://nope"], {})


# --- several replicas: only the leader notifies, a new leader neither repeats nor misses -----------------------

def test_only_the_leader_notifies_and_a_new_leader_resumes_from_the_ledger(receiver):
    from meshcore.controlplane.alerting import MemoryLedger

    from ._leadership import ManualLeadership

    ledger = MemoryLedger()  # stands in for Consul KV: shared by the replicas
    lead_a, lead_b = ManualLeadership("a", leading=True), ManualLeadership("b", leader="a")
    a = make_alerting([receiver.url], leadership=lead_a, ledger=ledger)
    b = make_alerting([receiver.url], leadership=lead_b, ledger=ledger)
    try:
        t0 = 1_700_000_000.0
        for i in range(3):  # both evaluate the same signals; the alert fires at t0 + 2
            for replica in (a, b):
                replica.evaluate(sig(t0 + i, 1.0))
        assert [x.state for x in b.alerts()] == ["firing"]  # the firing state is computed on every replica
        [firing] = receiver.wait(1)
        assert firing["status"] == "firing"
        lead_a.set(False, leader="b")  # a loses the leadership, b takes over: nothing is repeated
        lead_b.set(True)
        for i in range(3, 6):
            for replica in (b, a):
                replica.evaluate(sig(t0 + i, 1.0))
        time.sleep(0.5)  # any duplicate would have arrived by now (deliveries are on loopback)
        bodies = receiver.wait(1)
    finally:
        a.stop()
        b.stop()
    assert len(bodies) == 1, [b["status"] for b in bodies]
    assert set(ledger.load()) == {firing["alerts"][0]["fingerprint"]}


def test_an_alert_that_fires_while_nobody_leads_is_notified_once_by_the_next_leader(receiver):
    from meshcore.controlplane.alerting import MemoryLedger

    from ._leadership import ManualLeadership

    ledger = MemoryLedger()
    lead_b, lead_c = ManualLeadership("b"), ManualLeadership("c")  # the leader died: nobody leads
    b = make_alerting([receiver.url], leadership=lead_b, ledger=ledger)
    c = make_alerting([receiver.url], leadership=lead_c, ledger=ledger)
    try:
        t0 = 1_700_000_000.0
        for i in range(3):
            for replica in (b, c):
                replica.evaluate(sig(t0 + i, 1.0))
        assert receiver.bodies == []
        lead_c.set(True)
        lead_b.set(False, leader="c")
        for i in range(3, 6):
            for replica in (b, c):
                replica.evaluate(sig(t0 + i, 1.0))
        [firing] = receiver.wait(1)
        time.sleep(0.5)
        assert len(receiver.bodies) == 1 and firing["status"] == "firing"
    finally:
        b.stop()
        c.stop()
