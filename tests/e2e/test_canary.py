"""End to end: automated canaries on real Envoys, judged by the Envoys' own stats, driven by ``meshctl canary``.

Its own bookinfo mesh (``_topology``) with a failing release: ``BOOKINFO_FAIL=reviews:v3`` makes reviews v3
answer 500 (see examples/bookinfo/app.py), while v1 and v2 are healthy. A client keeps sending requests through
the ingress gateway during the whole module, so productpage's Envoy measures reviews' subsets. The tests run in
file order, as an operator's session would: v1 -> v2 is promoted; v2 -> v3 is rolled back by itself.
Also checks ``meshctl apply --dry-run`` on the running mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from meshcore.demo.launcher import http_get

from ._topology import running_mesh

WORKERS = 4
FINISHED_WITHIN_S = 120


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("canary-mesh"), artifacts="e2e-canary-logs", leaf_ttl="1h",
                      agent_refresh="2s", env={"BOOKINFO_FAIL": "reviews:v3"}) as m:
        yield m


@pytest.fixture(scope="module")
def client(mesh):
    """Traffic through the gateway for as long as the module runs; ``versions`` counts reviews answers."""
    stop = threading.Event()
    seen: Counter = Counter()

    def loop():
        while not stop.is_set():
            status, body = http_get(mesh.url, timeout=5)
            try:
                reviews = json.loads(body).get("reviews") or {}
            except ValueError:
                reviews = {}
            seen["error" if status != 200 or "error" in reviews else reviews.get("version")] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    yield seen
    stop.set()
    for t in threads:
        t.join(timeout=10)


def _meshctl(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args, "--server", mesh.cp_info["http"]],
                          capture_output=True, text=True, timeout=FINISHED_WITHIN_S + 60,
                          env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def _versions(mesh, n: int = 40) -> Counter:
    out: Counter = Counter()
    for _ in range(n):
        status, body = http_get(mesh.url, timeout=5)
        reviews = json.loads(body).get("reviews") or {} if status == 200 else {}
        out["error" if "error" in reviews or status != 200 else reviews.get("version")] += 1
    return out


def _settle(mesh, want: str, timeout: float = 10.0) -> Counter:
    """Wait until 40 requests in a row answer from reviews ``want`` (the last routing change reached Envoy)."""
    deadline = time.monotonic() + timeout
    counts: Counter = Counter()
    while time.monotonic() < deadline:
        counts = _versions(mesh)
        if set(counts) == {want}:
            return counts
    return counts


def test_healthy_canary_is_promoted(mesh, client):
    out = _meshctl(mesh, "canary", "start", "reviews", "--from", "v1", "--to", "v2", "--steps", "25,50,100",
                   "--interval", "2s", "--max-error-rate", "5%", "--max-p99", "5s", "--min-requests", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reviews: promoted" in out.stdout, out.stdout
    status = json.loads(_meshctl(mesh, "canary", "status", "reviews", "-o", "json").stdout)
    actions = [d["action"] for d in status["decisions"]]
    assert status["phase"] == "promoted" and actions[0] == "start" and actions[-1] == "promote", actions
    assert actions.count("advance") == 2, status["decisions"]
    judged = [d for d in status["decisions"] if d["action"] in ("advance", "promote")]
    assert all(d["requests"] >= 5 and d["error_rate"] <= 0.05 for d in judged), judged
    assert _settle(mesh, "v2") == Counter({"v2": 40})


def test_apply_dry_run_shows_the_change_per_proxy(mesh, client, tmp_path):
    f = tmp_path / "split.yaml"
    f.write_text("""apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 50}
""")
    before = _meshctl(mesh, "get", "VirtualService", "reviews", "-o", "json").stdout
    out = _meshctl(mesh, "apply", "--dry-run", "-f", str(f), "-o", "json")
    assert out.returncode == 0, out.stderr
    nodes = json.loads(out.stdout)
    assert set(nodes) == {"n1", "n2", "n3", "gw"}
    assert any(n.startswith("route/outbound:reviews:") for n in nodes["n1"]["changed"]), nodes["n1"]
    assert '"weight": 50' in nodes["n1"]["diff"]
    assert nodes["n2"]["changed"] == [] and nodes["gw"]["diff"] == ""
    assert _meshctl(mesh, "get", "VirtualService", "reviews", "-o", "json").stdout == before


def test_failing_canary_is_rolled_back_by_itself(mesh, client):
    started = time.monotonic()
    out = _meshctl(mesh, "canary", "start", "reviews", "--to", "v3", "--steps", "25,50,100", "--interval", "2s",
                   "--max-error-rate", "5%", "--min-requests", "5", "-o", "json")
    assert out.returncode == 1, out.stdout + out.stderr
    final = json.loads(out.stdout)
    assert final["spec"]["stable"] == "v2"  # what the service was routed to: the promoted canary
    assert final["phase"] == "failed" and "error rate" in final["reason"], final
    last = final["decisions"][-1]
    assert last["action"] == "rollback" and last["weight"] == 25 and last["error_rate"] > 0.05, last
    assert time.monotonic() - started < FINISHED_WITHIN_S
    assert _settle(mesh, "v2") == Counter({"v2": 40})
    log = (mesh.state / "logs" / "controlplane.log").read_text()
    assert "canary service=reviews step=25" in log and "decision=rollback" in log
    assert "canary service=reviews step=50" in log and "decision=promote" in log
    assert client["v2"] > 0 and client["error"] > 0  # the client saw v3 fail while it had traffic
