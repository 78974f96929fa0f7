"""End to end: an injected fault fires an alert, the webhook gets it; removing the fault resolves it.

Own bookinfo mesh (``running_mesh``) with a 2 s collector interval and the control plane's webhook set to a
receiver this test runs on loopback (``MESHCORE_ALERT_WEBHOOKS``). Traffic flows through the ingress
gateway the whole time; a 100% abort fault on ratings (VirtualService) pushes ratings' error rate over
the rule's 50% threshold; after ``for`` the alert fires (webhook + ``GET /v1/alerts`` + ``meshctl
alerts``); deleting the fault resolves it and the webhook receives the resolved payload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.demo.launcher import http_get, wait_until

from ._topology import running_mesh

RULE = """apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: ratings-errors}
spec:
  signal: error_rate
  match: {service: ratings}
  op: ">"
  threshold: 50%
  for: 4s
  keepFiringFor: 10s   # a scrape missed on a loaded machine must not resolve it
  severity: critical
  summary: "{service} fails {value} of its requests"
"""
FAULT = (open(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "traffic", "ratings-abort.yaml")).read())
ALERTNAME = "RatingsErrors"


class Receiver:
    def __init__(self):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with outer.lock:
                    outer.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ours(self, status: str) -> list[dict]:
        with self.lock:
            return [b for b in self.bodies if b["groupLabels"].get("alertname") == ALERTNAME and b["status"] == status]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, receiver):
    with running_mesh(tmp_path_factory.mktemp("alerts-mesh"), artifacts="alerts", agent_refresh="2s",
                      collect_interval="2s", env={"MESHCORE_ALERT_WEBHOOKS": receiver.url}) as m:
        yield m


def _get(mesh, path: str):
    status, body = http_get(mesh.cp_info["http"] + path, timeout=10, headers=mesh.auth_headers())
    assert status == 200, body
    return json.loads(body)


def test_fault_fires_the_alert_and_removing_it_resolves_it(mesh, receiver):
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            http_get(mesh.url)
            time.sleep(0.02)

    workers = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        mesh._post("/v1/resources", {"files": [{"name": "rule.yaml", "content": RULE}]})
        wait_until(lambda: any(r["name"] == "ratings-errors" for r in _get(mesh, "/v1/alerts/rules")), 30,
                   "the applied AlertRule to be in force")
        rules = {r["name"]: r for r in _get(mesh, "/v1/alerts/rules")}
        assert rules["ratings-errors"]["threshold_value"] == 0.5 and "high-error-rate" in rules
        time.sleep(3)  # a few healthy intervals first: nothing fires without the fault
        assert receiver.ours("firing") == []

        mesh._post("/v1/resources", {"files": [{"name": "ratings-abort.yaml", "content": FAULT}]})
        wait_until(lambda: receiver.ours("firing"), 120, f"the webhook to receive {ALERTNAME} firing")
        [firing] = receiver.ours("firing")[:1]
        [alert] = [a for a in firing["alerts"] if a["labels"]["service"] == "ratings"]
        assert alert["status"] == "firing" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"].startswith("ratings fails ")
        assert firing["version"] == "4" and firing["externalURL"] == mesh.cp_info["http"]

        active = [a for a in _get(mesh, "/v1/alerts") if a["name"] == "ratings-errors"]
        assert active and active[0]["state"] == "firing" and active[0]["value"] > 0.5
        env = {**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)}
        out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "alerts", "-o", "json", "--server",
                              mesh.cp_info["http"]], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert any(a["name"] == "ratings-errors" and a["state"] == "firing" for a in json.loads(out.stdout)), out.stdout

        assert receiver.ours("resolved") == []  # the fault is still there: nothing resolved yet
        mesh._post("/v1/resources/delete", {"keys": ["VirtualService/default/ratings-abort"]})
        wait_until(lambda: receiver.ours("resolved"), 120, f"the webhook to receive {ALERTNAME} resolved")
        [resolved] = receiver.ours("resolved")[:1]
        [done] = [a for a in resolved["alerts"] if a["labels"]["service"] == "ratings"]
        assert done["status"] == "resolved" and done["fingerprint"] == alert["fingerprint"]
        assert done["endsAt"] > done["startsAt"]
        wait_until(lambda: not [a for a in _get(mesh, "/v1/alerts") if a["name"] == "ratings-errors"], 30,
                   "the resolved alert to leave /v1/alerts")
    finally:
        stop.set()
        for w in workers:
            w.join(10)
