"""End to end: traffic management on real Envoys, driven by ``meshctl traffic`` and measured through the gateway.

Its own bookinfo mesh (``_topology``: productpage -> reviews v1/v2/v3, reviews v2/v3 -> ratings) on test-only
loopback addresses and free ports. Every request goes through the ingress gateway to
``/productpage?format=json``, whose ``reviews.version`` says which reviews instance answered. Shares are
checked against a binomial 4-sigma bound; convergence after a command within 2 seconds. The tests run in
file order and build on each other, as an operator's session would.
"""

from __future__ import annotations

import http.server
import json
import os
import math
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshcore.demo.launcher import http_get, wait_until

from ._topology import meshctl, running_mesh, service

CONVERGE_S = 2.0
WORKERS = 8
JASON = {"end-user": "jason"}


def _tcp(name, sid, node, upstreams=()):
    """A TCP service instance (meta protocol=tcp) without a health check: the sample app serves bookinfo's names
    only (for these it exits at once); the echo instances are served by this module (:class:`_Echo`)."""
    node, svc = service(name, sid, node, sid.rsplit("-", 1)[1], upstreams)
    svc["meta"]["protocol"] = "tcp"
    svc.pop("check", None)
    return node, svc


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = f"({self.server.instance})\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    # Beside bookinfo: a TCP service (echo v1 on n2, v2 on n3, each instance on its own port) and two TCP callers
    # of it on n1. The echo servers speak HTTP (their answer names the instance); the mesh carries it as plain TCP.
    extra = [_tcp("echo", "echo-v1", "n2"), _tcp("echo", "echo-v2", "n3"),
             _tcp("tcpcall", "tcpcall-v1", "n1", ["echo"]), _tcp("tcpbatch", "tcpbatch-v1", "n1", ["echo"])]
    servers = []
    for _node, svc in extra[:2]:
        server = http.server.ThreadingHTTPServer((svc["connect"]["sidecar_service"]["proxy"]["local_service_address"],
                                                  svc["port"]), _Echo)
        server.instance = svc["id"]  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        with running_mesh(tmp_path_factory.mktemp("traffic-mesh"), artifacts="e2e-traffic-logs",
                          leaf_ttl="1h", agent_refresh="2s", extra=extra) as m:
            yield m
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# --- helpers ------------------------------------------------------------------------------------------


def _traffic(mesh, *args: str) -> tuple[dict, float]:
    """Run ``python -m meshcore.cli.traffic ... -o json``; return its JSON and when it returned (monotonic)."""
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.traffic", *args, "-o", "json",
                          "--server", mesh.cp_info["http"]], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})
    done = time.monotonic()
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), done


def _meshctl(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args, "--server", mesh.cp_info["http"]],
                          capture_output=True, text=True, check=True, timeout=60,
                          env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def _get(mesh, headers: dict | None = None) -> tuple[int, dict]:
    status, body = http_get(mesh.url, timeout=5, headers=headers)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body.decode(errors="replace")}


def _version(page: dict) -> str | None:
    reviews = page.get("reviews") or {}
    return None if "error" in reviews else reviews.get("version")


def _sample(mesh, n: int, headers: dict | None = None) -> Counter:
    """``n`` requests through the gateway (in parallel); Counter of reviews versions. Every one must answer 200."""
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda _: _get(mesh, headers), range(n)))
    bad = [(s, p) for s, p in results if s != 200 or _version(p) is None]
    assert not bad, f"{len(bad)} of {n} requests failed, e.g. {bad[0]}"
    return Counter(_version(p) for _, p in results)


def _converge(mesh, ok, since: float, headers: dict | None = None, streak: int = 20, timeout: float = 10.0) -> float:
    """Seconds from ``since`` until ``streak`` requests in a row satisfy ``ok(version)``."""
    run = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, page = _get(mesh, headers)
        if status == 200 and ok(_version(page)):
            run += 1
            if run >= streak:
                return time.monotonic() - since
        else:
            run = 0
    pytest.fail(f"traffic did not converge within {timeout}s")


def _within_4_sigma(count: int, n: int, p: float) -> tuple[bool, str]:
    mean, sigma = n * p, math.sqrt(n * p * (1 - p))
    return abs(count - mean) <= 4 * sigma, f"{count} of {n} (expected {mean:.0f} +/- {4 * sigma:.1f})"


# --- tests ------------------------------------------------------------------------------------------------


def test_split_50_50(mesh):
    result, done = _traffic(mesh, "split", "reviews", "v1=50", "v3=50")
    assert result["summary"] == "reviews: 50% v1, 50% v3"
    assert result["virtualService"]["spec"]["http"][-1]["route"] == [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50},
    ]
    took = _converge(mesh, lambda v: v in ("v1", "v3"), done)
    assert took < CONVERGE_S, f"split took {took:.2f}s to reach every request"
    counts = _sample(mesh, 400)
    assert set(counts) <= {"v1", "v3"}, counts
    ok, why = _within_4_sigma(counts["v1"], 400, 0.5)
    assert ok, f"v1 share off: {why}"


def test_header_route_sends_jason_to_v2_and_leaves_the_rest(mesh):
    result, done = _traffic(mesh, "route", "reviews", "--header", "end-user=jason", "--to", "v2")
    rules = result["virtualService"]["spec"]["http"]
    assert rules[0]["match"] == [{"headers": {"end-user": {"exact": "jason"}}}]
    took = _converge(mesh, lambda v: v == "v2", done, headers=JASON)
    assert took < CONVERGE_S, f"route took {took:.2f}s"
    assert _sample(mesh, 100, JASON) == Counter({"v2": 100})
    others = _sample(mesh, 200, {"end-user": "alice"}) + _sample(mesh, 100)
    assert set(others) == {"v1", "v3"}, others
    ok, why = _within_4_sigma(others["v1"], 300, 0.5)
    assert ok, f"the 50/50 split changed for other users: {why}"


def test_abort_fault_on_ratings_shows_ratings_unavailable(mesh, tmp_path):
    doc = tmp_path / "ratings-abort.yaml"
    doc.write_text("""
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata:
  name: ratings-abort
spec:
  hosts: [ratings]
  http:
  - fault:
      abort:
        httpStatus: 503
        percentage:
          value: 100
    route:
    - destination:
        host: ratings
""")
    _meshctl(mesh, "apply", "-f", str(doc))
    try:
        def unavailable(page):
            ratings = (page.get("reviews") or {}).get("ratings") or {}
            return ratings.get("error") == "ratings unavailable" and ratings.get("status") == 503

        deadline = time.monotonic() + 10
        while not unavailable(_get(mesh, JASON)[1]):
            assert time.monotonic() < deadline, "the abort fault never reached productpage"
        for _ in range(20):  # 100%: every request, and the page itself still answers
            status, page = _get(mesh, JASON)
            assert status == 200 and page["reviews"]["version"] == "v2"
            assert unavailable(page), page["reviews"]
    finally:
        _meshctl(mesh, "delete", "-f", str(doc))
    deadline = time.monotonic() + 10
    while "error" in (_get(mesh, JASON)[1].get("reviews") or {}).get("ratings", {"error": 1}):
        assert time.monotonic() < deadline, "ratings did not come back after deleting the fault"


def test_split_90_10_over_1000_requests(mesh):
    _, done = _traffic(mesh, "split", "reviews", "v1=90", "v2=10")
    _converge(mesh, lambda v: v in ("v1", "v2"), done, headers={"end-user": "alice"}, streak=40)
    counts = _sample(mesh, 1000, {"end-user": "alice"})
    assert set(counts) <= {"v1", "v2"}, counts
    ok, why = _within_4_sigma(counts["v2"], 1000, 0.1)
    assert ok, f"v2 share off: {why}"


class _Load:
    """Requests in a loop from several threads, recording (finished at, status, version)."""

    def __init__(self, mesh, workers: int = 4):
        self.mesh, self.stop, self.records = mesh, threading.Event(), []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self):
        while not self.stop.is_set():
            status, page = _get(self.mesh)
            with self.lock:
                self.records.append((time.monotonic(), status, _version(page)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)


def _switch_under_load(mesh, args: list[str], target: str) -> dict:
    with _Load(mesh) as load:
        time.sleep(0.5)
        started = time.monotonic()
        result, done = _traffic(mesh, *args)
        time.sleep(CONVERGE_S + 0.5)
    records = [r for r in load.records if r[0] >= started - 0.5]
    failed = [r for r in records if r[1] != 200 or r[2] is None]
    assert not failed, f"{len(failed)} of {len(records)} requests failed during the switch, e.g. {failed[0]}"
    stale = [t for t, _, v in records if v != target]
    last_stale = max(stale) - done if stale else 0.0
    assert last_stale < CONVERGE_S, f"requests still reached the old color {last_stale:.2f}s after the command"
    assert [v for t, _, v in records if t > done + CONVERGE_S] and all(
        v == target for t, _, v in records if t > done + CONVERGE_S)
    print(f"{' '.join(args)}: command {done - started:.2f}s, converged {max(last_stale, 0):.2f}s after, "
          f"{len(records)} requests, 0 failed")
    return result


def test_blue_green_switch_and_rollback_without_failed_requests(mesh):
    _, done = _traffic(mesh, "switch", "reviews", "--to", "v1")
    _converge(mesh, lambda v: v == "v1", done, streak=30)

    result = _switch_under_load(mesh, ["switch", "reviews", "--to", "v3"], "v3")
    labels = result["virtualService"]["metadata"]["labels"]
    assert labels["traffic.mesh.io/active"] == "v3" and labels["traffic.mesh.io/previous"] == "v1"

    result = _switch_under_load(mesh, ["rollback", "reviews"], "v1")
    labels = result["virtualService"]["metadata"]["labels"]
    assert labels["traffic.mesh.io/active"] == "v1" and labels["traffic.mesh.io/previous"] == "v3"
    # the A/B route survived every switch
    assert _sample(mesh, 20, JASON) == Counter({"v2": 20})


# --- tcp routes ---------------------------------------------------------------------------------------------


def _echo_instance(mesh, caller: str) -> str:
    """Which echo instance answers a connection to ``caller``'s echo upstream (raw TCP through both Envoys; the
    sample app behind it speaks HTTP, whose index page names its instance)."""
    up = mesh.defs[caller]["connect"]["sidecar_service"]["proxy"]["upstreams"][0]
    with socket.create_connection((up["local_bind_address"], up["local_bind_port"]), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except ConnectionResetError:  # the proxies may end a closed connection with a reset: the answer is in
            pass
    for sid in ("echo-v1", "echo-v2"):
        if f"({sid})".encode() in data:
            return sid
    return data.decode(errors="replace")[:200]


def test_tcp_rules_match_the_caller_and_route_to_a_destination_port(mesh, tmp_path):
    """echo's instances register different ports, so a destination port picks an instance: tcpbatch's connections
    (sourceLabels) go to v2's port, every other caller's (the rule for its listener port) to v1's."""
    v1, v2 = mesh.defs["echo-v1"]["port"], mesh.defs["echo-v2"]["port"]
    call_port = mesh.defs["tcpcall-v1"]["connect"]["sidecar_service"]["proxy"]["upstreams"][0]["local_bind_port"]
    vs = tmp_path / "echo.yaml"
    vs.write_text(f"""
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  tcp:
  - match: [{{sourceLabels: {{app: tcpbatch}}}}]
    route: [{{destination: {{host: echo, port: {{number: {v2}}}}}}}]
  - match: [{{port: {call_port}}}]
    route: [{{destination: {{host: echo, port: {{number: {v1}}}}}}}]
""")
    meshctl(mesh, "apply", "-f", str(vs))
    want = {"tcpcall-v1": {"echo-v1"}, "tcpbatch-v1": {"echo-v2"}}
    wait_until(lambda: {c: {_echo_instance(mesh, c) for _ in range(6)} for c in want} == want, 30,
               "tcpbatch's connections to reach echo v2 and tcpcall's echo v1")
    # and they hold: 20 new connections each
    assert {_echo_instance(mesh, "tcpcall-v1") for _ in range(20)} == {"echo-v1"}
    assert {_echo_instance(mesh, "tcpbatch-v1") for _ in range(20)} == {"echo-v2"}


def test_an_http_destination_port_picks_the_instances_registered_on_it(mesh, tmp_path):
    """reviews' instances each register their own port here: routing to v3's port sends every request to v3
    (the cluster of the instances on that port), with no subset."""
    result, _ = _traffic(mesh, "switch", "reviews", "--to", "v1")
    meta = result["virtualService"]["metadata"]
    port = mesh.defs["reviews-v3"]["port"]
    vs = tmp_path / "reviews-port.yaml"
    vs.write_text(f"""
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {{name: {meta['name']}, namespace: {meta.get('namespace', 'default')}}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: {port}}}}}}}]
""")
    meshctl(mesh, "apply", "-f", str(vs))
    _converge(mesh, lambda v: v == "v3", time.monotonic(), streak=20, timeout=30)
    assert _sample(mesh, 40) == Counter({"v3": 40})
