"""Policy decisions per caller from Envoy's JSON access log: the tail reader, the counting, the
follower thread, and (with a real Envoy) finding the log through Envoy's admin config dump."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from meshcore.agent._access_log import (
    ALLOW_NO_MATCH,
    MAX_LINE,
    OTHER,
    UNAUTHENTICATED,
    AccessLogFollower,
    LogTail,
    decisions,
    envoy_access_log_path,
    policy_label,
    source_service,
)

TD = "spiffe://cluster.local/ns/default/sa"


def _line(**kw) -> str:
    entry = {"direction": "inbound", "service": "productpage", "source_spiffe_id": f"{TD}/ingress-gateway",
             "destination_spiffe_id": f"{TD}/productpage", "rbac_policy": None, "rbac_result": "allowed",
             "audit_policy": None, "response_code": 200}
    entry.update(kw)
    return json.dumps(entry) + "\n"


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


# --- the tail reader ------------------------------------------------------------------------------

def test_starts_at_the_end_and_reads_only_new_whole_lines(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("old 1\nold 2\n")
    tail = LogTail(str(path))
    assert tail.read_lines() == []  # what was there before is not new
    _append(path, "new 1\nnew 2\npart")
    assert tail.read_lines() == ["new 1", "new 2"]
    assert tail.read_lines() == []
    _append(path, "ial\n")
    assert tail.read_lines() == ["partial"]


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    path = tmp_path / "access.log"
    tail = LogTail(str(path))
    assert tail.read_lines() == [] and not tail.following
    path.write_text("first\n")
    assert tail.read_lines() == ["first"]


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("")
    tail = LogTail(str(path))
    assert tail.read_lines() == []  # following from here
    _append(path, "a\n")
    assert tail.read_lines() == ["a"]
    _append(path, "b\n")  # written before the rename, not read yet
    os.rename(path, tmp_path / "access.log.1")
    path.write_text("c\nd\n")  # the writer reopened the path
    assert tail.read_lines() == ["b", "c", "d"]
    assert tail.rotations == 1
    _append(path, "e\n")
    assert tail.read_lines() == ["e"]


def test_rotation_to_nothing_then_a_new_file(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("")
    tail = LogTail(str(path))
    assert tail.read_lines() == [] and tail.following
    os.rename(path, tmp_path / "old")
    assert tail.read_lines() == [] and not tail.following
    path.write_text("x\n")
    assert tail.read_lines() == ["x"]


def test_truncation_in_place_restarts_at_zero(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("")
    tail = LogTail(str(path))
    assert tail.read_lines() == []  # following from here
    _append(path, "one\ntwo\nthr")
    assert tail.read_lines() == ["one", "two"]
    with open(path, "r+") as f:  # copytruncate
        f.truncate(0)
    _append(path, "z\n")
    assert tail.read_lines() == ["z"]  # the partial "thr" of the old content is dropped
    assert tail.truncations == 1


def test_an_over_long_line_is_skipped_whole(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("")
    tail = LogTail(str(path))
    assert tail.read_lines() == []  # following from here
    _append(path, "x" * (MAX_LINE + 10))
    assert tail.read_lines() == []
    _append(path, "yyyy\nok\n")
    assert tail.read_lines() == ["ok"]
    assert tail.skipped == 1


# --- what a line counts as ------------------------------------------------------------------------

def test_source_service_from_the_callers_identity():
    assert source_service(f"{TD}/ingress-gateway", f"{TD}/productpage") == "ingress-gateway"
    other = "spiffe://other.example/ns/default/sa/client"
    assert source_service(other, f"{TD}/productpage") == "other.example/ns/default/sa/client"
    assert source_service("spiffe://cluster.local/custom/path", f"{TD}/x") == "cluster.local/custom/path"
    assert source_service(None, f"{TD}/x") == UNAUTHENTICATED
    assert source_service("", None) == UNAUTHENTICATED
    assert source_service(f"{TD}/reviews", None) == "reviews"


def test_policy_label_drops_the_rule_index():
    assert policy_label("default/productpage-no-post[0]") == "default/productpage-no-post"
    assert policy_label("shop/a[12]") == "shop/a"
    assert policy_label("") == ALLOW_NO_MATCH and policy_label(None) == ALLOW_NO_MATCH


def test_decisions_of_inbound_lines_only():
    denied = json.loads(_line(rbac_result="denied", rbac_policy="default/no-post[0]", response_code=403))
    assert decisions(denied) == [("denied", ("ingress-gateway", "productpage", "default/no-post"))]
    no_rule = json.loads(_line(rbac_result="denied", rbac_policy=""))
    assert decisions(no_rule) == [("denied", ("ingress-gateway", "productpage", ALLOW_NO_MATCH))]
    audited = json.loads(_line(audit_policy="default/watch[1]"))
    assert decisions(audited) == [("audited", ("ingress-gateway", "productpage", "default/watch"))]
    both = json.loads(_line(rbac_result="denied", rbac_policy="default/no-post[0]", audit_policy="default/watch[0]"))
    assert [k for k, _ in decisions(both)] == ["denied", "audited"]
    assert decisions(json.loads(_line())) == []
    outbound = json.loads(_line(direction="outbound", rbac_result="denied"))
    assert decisions(outbound) == []


# --- the follower ---------------------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_follower_counts_per_source_destination_and_policy(tmp_path):
    path = tmp_path / "access-n1.log"
    path.write_text(_line(rbac_result="denied", rbac_policy="default/no-post[0]"))  # before: not counted
    where = {"path": str(path)}
    follower = AccessLogFollower(lambda: where["path"], clock=_Clock())
    assert follower.counts() is None  # nothing followed yet
    follower.poll()
    counts = follower.counts()
    assert counts is not None and counts.denied == {} and counts.path == str(path)
    _append(path, _line(rbac_result="denied", rbac_policy="default/no-post[0]") * 3
            + _line(rbac_result="denied", rbac_policy="default/no-post[0]",
                    source_spiffe_id=f"{TD}/reviews", service="ratings")
            + _line(rbac_result="denied", rbac_policy="", source_spiffe_id=None)
            + _line(audit_policy="default/watch[0]")
            + _line()
            + "not json\n")
    follower.poll()
    counts = follower.counts()
    assert counts.denied == {("ingress-gateway", "productpage", "default/no-post"): 3,
                             ("reviews", "ratings", "default/no-post"): 1,
                             (UNAUTHENTICATED, "productpage", ALLOW_NO_MATCH): 1}
    assert counts.audited == {("ingress-gateway", "productpage", "default/watch"): 1}
    assert (counts.lines, counts.unparsable) == (8, 1)


def test_follower_drops_the_log_when_envoy_stops_writing_one(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("")
    clock = _Clock()
    where: dict = {"path": str(path)}
    follower = AccessLogFollower(lambda: where["path"], clock=clock, rediscover=5)
    follower.poll()
    assert follower.counts() is not None
    where["path"] = None  # Envoy did not answer: keep following
    clock.now = 6
    follower.poll()
    assert follower.counts() is not None
    where["path"] = ""  # Envoy answered: no JSON file log any more
    clock.now = 12
    follower.poll()
    assert follower.counts() is None


def test_follower_caps_distinct_series(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("")
    follower = AccessLogFollower(lambda: str(path), clock=_Clock(), max_series=2)
    follower.poll()
    _append(path, "".join(_line(rbac_result="denied", rbac_policy="d/p[0]", source_spiffe_id=f"{TD}/s{i}")
                          for i in range(5)))
    follower.poll()
    denied = follower.counts().denied
    assert denied[(OTHER, "productpage", "d/p")] == 3 and sum(denied.values()) == 5


def test_an_unreadable_log_falls_back_and_recovers(tmp_path):
    path = tmp_path / "a.log"
    path.mkdir()  # reading it fails (EISDIR) even as root, as a file without read permission would
    follower = AccessLogFollower(lambda: str(path), clock=_Clock())
    follower.poll()
    assert follower.counts() is None  # the RBAC counters take over
    path.rmdir()
    path.write_text("")
    follower.poll()
    assert follower.counts() is not None


def test_follower_thread_sees_lines_within_seconds(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("")
    follower = AccessLogFollower(lambda: str(path), interval=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while follower.counts() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _append(path, _line(rbac_result="denied", rbac_policy="default/x[0]"))
        while not follower.counts().denied:
            assert time.monotonic() < deadline, "the follower thread did not count the new line"
            time.sleep(0.05)
    finally:
        follower.stop()


# --- with a real Envoy ----------------------------------------------------------------------------

POLICIES = """apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: mesh, namespace: meshcore-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-deny, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-audit, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited"]}}]}]
"""


class _App(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_envoy_names_its_log_and_the_follower_counts_its_decisions(tmp_path):
    """Static listeners built by meshcore, on a real Envoy: discovery via /config_dump, then counting."""
    from meshcore.agent._series import policy_audited_family, policy_denied_family
    from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo, TelemetrySettings
    from meshcore.compose import build_proxy
    from tests.policies._catalog import snapshot, write_catalog
    from tests.policies._envoy import StaticEnvoy, wait_listening

    defs = write_catalog(tmp_path / "catalog", [{"name": "web"}])
    base = snapshot(tmp_path / "catalog", POLICIES)
    settings = MeshSettings(telemetry=TelemetrySettings(access_log=str(tmp_path / "access-{node}.log")))
    built = build_proxy(MeshSnapshot.build(base.catalog, base.resources, base.trust_domain, settings),
                        ProxyInfo(node="n1", secrets_dir="/s"))
    app = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App)
    app.daemon_threads = True
    threading.Thread(target=app.serve_forever, daemon=True).start()
    envoy = StaticEnvoy(built, tmp_path)
    envoy.argv += ["--file-flush-interval-msec", "100"]
    try:
        with envoy:
            assert envoy_access_log_path(envoy.admin) == str(tmp_path / "access-n1.log")
            follower = AccessLogFollower(lambda: envoy_access_log_path(envoy.admin), clock=_Clock())
            follower.poll()
            port = defs["web"]["connect"]["sidecar_service"]["port"]
            wait_listening("127.0.0.1", port)
            assert [_get(port, "/admin/a"), _get(port, "/admin/b"), _get(port, "/audited"), _get(port, "/")] \
                == [403, 403, 200, 200]
            deadline = time.monotonic() + 20
            while True:
                follower.poll()
                counts = follower.counts()
                if counts is not None and counts.lines >= 4:
                    break
                assert time.monotonic() < deadline, "Envoy's access log lines were not counted"
                time.sleep(0.1)
            stats_text = _rbac_stats(envoy.admin)
    finally:
        app.shutdown()
    key = (UNAUTHENTICATED, "web", "default/web-deny")  # plaintext (PERMISSIVE): no client certificate
    assert counts.denied == {key: 2}
    assert counts.audited == {(UNAUTHENTICATED, "web", "default/web-audit"): 1}
    # without a log, the same decisions from Envoy's RBAC counters: same totals, caller unknown
    denied = {tuple(s.labels.values()): s.value for s in policy_denied_family(stats_text, ["web"]).samples}
    audited = {tuple(s.labels.values()): s.value for s in policy_audited_family(stats_text, ["web"]).samples}
    assert denied == {("unknown", "web", "default/web-deny"): 2.0}
    assert audited == {("unknown", "web", "default/web-audit"): 1.0}


def _rbac_stats(admin: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://{admin}/stats?format=json&filter=rbac", timeout=5) as resp:
        return {s["name"]: float(s["value"]) for s in json.loads(resp.read())["stats"] if "name" in s}


def test_no_envoy_means_unknown_not_off():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert envoy_access_log_path(f"127.0.0.1:{port}", timeout=1) is None


def test_a_large_backlog_is_read_over_several_calls(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("")
    tail = LogTail(str(path), budget=10)
    assert tail.read_lines() == []
    _append(path, "".join(f"line{i}\n" for i in range(6)))  # 36 bytes
    first = tail.read_lines()
    assert first == ["line0"]  # 10 bytes: one whole line and the start of the next
    rest = []
    for _ in range(10):
        rest += tail.read_lines()
    assert first + rest == [f"line{i}" for i in range(6)]
