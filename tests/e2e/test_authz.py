"""End to end: AuthorizationPolicy enforced by the real Envoys of a running mesh, and `meshctl authz check` agreeing.

Its own bookinfo mesh (``_topology``) on test-only loopback addresses and free ports. Policies are
applied and deleted with ``meshctl`` subprocesses. Callers with other identities of the trust domain
are made two ways: a node identity through a join token (as an agent gets one), and workload
identities signed by the mesh's own CA (opened from its encrypted state with the mesh's KEK, as
``meshctl`` may do on the control plane host), so requests can be sent straight to an inbound
listener over mTLS as any principal.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.ca import CertificateAuthority, key_to_pem, load_kek, make_csr, new_private_key
from meshcore.demo.launcher import http_get, wait_until

from ._topology import NODES, meshctl, running_mesh

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"
CONVERGE_S = 2.0
TESTER = "cluster.local/ns/default/sa/tester"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("authz-mesh")
    with running_mesh(state, artifacts="e2e-authz-logs", leaf_ttl="1h", agent_refresh="2s") as m:
        m.certs = state / "certs"
        m.certs.mkdir()
        m.ca = CertificateAuthority.open(state / "controlplane" / "ca", kek=load_kek(state / "kek"),
                                         leaf_ttl=timedelta(minutes=30))
        yield m


# --- helpers ------------------------------------------------------------------------------------------


def _meshctl(mesh, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return meshctl(mesh, *args, check=check, timeout=60)


def _apply(mesh, path: Path) -> None:
    _meshctl(mesh, "apply", "-f", str(path))


def _delete(mesh, path: Path) -> None:
    _meshctl(mesh, "delete", "-f", str(path), "--ignore-not-found")


def _authz(mesh, *args: str) -> dict:
    return json.loads(_meshctl(mesh, "authz", "check", *args, "-o", "json").stdout)


def _inbound(mesh, sid: str) -> tuple[str, int]:
    d = mesh.defs[sid]
    return NODES[d["node"]], d["connect"]["sidecar_service"]["port"]


def _identity(mesh, spiffe_id: str) -> tuple[Path, Path]:
    """A certificate for ``spiffe_id`` from the mesh's CA (the key made here, only a CSR signed)."""
    stem = spiffe_id.replace("spiffe://", "").replace("/", "_")
    cert, key_path = mesh.certs / f"{stem}.pem", mesh.certs / f"{stem}.key"
    if not cert.exists():
        key = new_private_key()
        issued = mesh.ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id)
        cert.write_text(issued.chain_pem)
        key_path.write_text(key_to_pem(key))
    return cert, key_path


def _tester_identity(mesh) -> tuple[Path, Path]:
    """A workload SVID no policy names by default (``TESTER``): the caller the policy tests allow and deny.
    (A node certificate cannot be one: inbound listeners accept only workload SVIDs.)"""
    return _identity(mesh, "spiffe://" + TESTER)


def _mtls_status(mesh, sid: str, identity: tuple[Path, Path], method: str = "GET", path: str = "/health",
                 headers: dict | None = None, source_ip: str | None = None) -> int:
    """Status of one request sent straight to ``sid``'s inbound listener over mTLS as ``identity``."""
    host, port = _inbound(mesh, sid)
    ctx = ssl.create_default_context(cafile=mesh.cp_info["ca_file"])
    ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN
    ctx.load_cert_chain(str(identity[0]), str(identity[1]))
    lines = [f"{method} {path} HTTP/1.1", "Host: details", "Connection: close", "Content-Length: 0"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, port), timeout=5, source_address=(source_ip or "127.0.0.1", 0)) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while b"\r\n" not in data and (chunk := tls.recv(4096)):
                data += chunk
    return int(data.split(b" ", 2)[1])


def _gateway(mesh, method: str = "GET", path: str = "/productpage?format=json") -> tuple[int, bytes]:
    req = urllib.request.Request(mesh.gateway + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _page_parts_ok(mesh) -> bool:
    status, body = _gateway(mesh)
    if status != 200:
        return False
    page = json.loads(body)
    return "error" not in page["details"] and "error" not in page["reviews"]


def _converges(check, what: str) -> float:
    started = time.monotonic()
    wait_until(check, CONVERGE_S, what, interval=0.05)
    return time.monotonic() - started


# --- (a) the product-brief contract -------------------------------------------------------------------


def test_get_only_policy_on_productpage_within_two_seconds(mesh):
    policy = EXAMPLES / "productpage-get-only.yaml"
    assert _gateway(mesh, "POST", "/productpage")[0] == 405  # the app's own answer: it only serves GET
    assert _page_parts_ok(mesh)
    try:
        _apply(mesh, policy)
        took = _converges(lambda: _gateway(mesh, "POST", "/productpage")[0] == 403, "POST to answer 403")
        assert _page_parts_ok(mesh)  # GET still 200, with details and reviews
        print(f"apply -> enforced in {took * 1000:.0f} ms")
        post = _authz(mesh, "--from", "ingress-gateway", "--to", "productpage", "--method", "POST", "--path", "/productpage")
        get = _authz(mesh, "--from", "ingress-gateway", "--to", "productpage", "--path", "/productpage")
        assert post["allowed"] is False and "default/productpage-get-only" in post["results"][0]["reason"]
        assert get["allowed"] is True and get["results"][0]["policy"] == "default/productpage-get-only"
        table = _meshctl(mesh, "authz", "check", "--from", "ingress-gateway", "--to", "productpage",
                         "--method", "POST").stdout
        assert "productpage-v1: DENIED" in table
    finally:
        _delete(mesh, policy)
    took = _converges(lambda: _gateway(mesh, "POST", "/productpage")[0] == 405, "POST to reach the app again")
    print(f"delete -> lifted in {took * 1000:.0f} ms")
    assert _page_parts_ok(mesh)
    assert "no policy selects productpage: allowed" in _meshctl(
        mesh, "authz", "check", "--from", "ingress-gateway", "--to", "productpage", "--method", "POST").stdout


# --- (b) principals --------------------------------------------------------------------------------


def test_principal_policy_on_details(mesh):
    policy = EXAMPLES / "details-from-productpage.yaml"
    tester = _tester_identity(mesh)
    assert _mtls_status(mesh, "details-v1", tester, path="/details/0") == 200
    try:
        _apply(mesh, policy)
        _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 403,
                   "details to refuse the tester identity")
        assert _page_parts_ok(mesh)  # productpage's own identity still gets details
        assert _authz(mesh, "--from", "productpage", "--to", "details", "--path", "/details/0")["allowed"] is True
        other = _authz(mesh, "--from", TESTER, "--to", "details", "--path", "/details/0")
        assert other["allowed"] is False and other["from"]["principal"] == TESTER
    finally:
        _delete(mesh, policy)
    _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 200, "the policy to lift")


# --- (c) DENY beats ALLOW ----------------------------------------------------------------------------

DENY_BEATS_ALLOW = f"""\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: details-allow}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  rules:
  - from: [{{source: {{principals: ["{TESTER}", "cluster.local/ns/default/sa/productpage"]}}}}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: details-deny-tester}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{TESTER}"]}}}}]
    to: [{{operation: {{paths: ["/details/*"]}}}}]
"""


def test_deny_beats_allow(mesh, tmp_path):
    policy = tmp_path / "deny-beats-allow.yaml"
    policy.write_text(DENY_BEATS_ALLOW)
    tester = _tester_identity(mesh)
    try:
        _apply(mesh, policy)
        _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 403, "the DENY policy")
        assert _mtls_status(mesh, "details-v1", tester, path="/health") == 200  # allowed, not denied
        assert _page_parts_ok(mesh)
        denied = _authz(mesh, "--from", TESTER, "--to", "details", "--path", "/details/0")["results"][0]
        assert (denied["allowed"], denied["action"], denied["policy"]) == (False, "DENY", "default/details-deny-tester")
        allowed = _authz(mesh, "--from", TESTER, "--to", "details", "--path", "/health")["results"][0]
        assert (allowed["allowed"], allowed["policy"]) == (True, "default/details-allow")
    finally:
        _delete(mesh, policy)
    _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 200, "the policies to lift")


# --- (d) mesh-wide default deny ------------------------------------------------------------------------


def test_mesh_wide_deny_all_and_back(mesh):
    policy = EXAMPLES / "deny-all.yaml"
    tester = _tester_identity(mesh)
    try:
        _apply(mesh, policy)
        took = _converges(lambda: _gateway(mesh)[0] == 403, "the gateway to get 403 from productpage")
        print(f"deny-all enforced in {took * 1000:.0f} ms")
        for sid, d in mesh.defs.items():
            if "connect" in d:
                assert _mtls_status(mesh, sid, tester) == 403, sid
        out = _authz(mesh, "--from", "ingress-gateway", "--to", "productpage")
        assert out["allowed"] is False and "meshcore-system/deny-all (no rules)" in out["results"][0]["reason"]
        out = _authz(mesh, "--from", "reviews", "--to", "ratings")
        assert out["allowed"] is False
    finally:
        _delete(mesh, policy)
    took = _converges(lambda: _page_parts_ok(mesh), "the page to be served again")
    print(f"deny-all lifted in {took * 1000:.0f} ms")


# --- (e) the evaluator and Envoy agree, request by request ------------------------------------------------

TABLE_POLICIES = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: details-table}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
  - from: [{source: {namespaces: ["prod-*"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/details/*"]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/*"], notPrincipals: ["*/sa/blocked"]}}]
    when: [{key: "request.headers[x-team]", values: ["books"]}]
  - from: [{source: {ipBlocks: ["127.0.0.31/32"]}}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: details-deny}
spec:
  selector: {matchLabels: {app: details}}
  action: DENY
  rules:
  - from: [{source: {namespaces: ["prod-*"]}}]
    to: [{operation: {paths: ["/details/1*"]}}]
  - when: [{key: source.principal, values: ["cluster.local/ns/default/sa/test*"]}]
"""

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
PROD_API = "spiffe://cluster.local/ns/prod-eu/sa/api"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
BLOCKED = "spiffe://cluster.local/ns/shop/sa/blocked"
TESTER_ROW = "tester"
# (identity, source ip, method, path, headers)
TABLE = [
    (PRODUCTPAGE, None, "GET", "/details/0", {}),
    (PRODUCTPAGE, None, "POST", "/anything", {}),
    (PROD_API, None, "GET", "/details/0", {}),
    (PROD_API, None, "GET", "/details/12", {}),
    (PROD_API, None, "POST", "/details/0", {}),
    (PROD_API, None, "GET", "/health", {}),
    (CART, None, "GET", "/details/0", {"x-team": "books"}),
    (CART, None, "GET", "/details/0", {"x-team": "music"}),
    (CART, None, "GET", "/details/0", {}),
    (CART, "127.0.0.31", "GET", "/details/0", {}),
    (BLOCKED, None, "GET", "/details/0", {"x-team": "books"}),
    (TESTER_ROW, None, "GET", "/details/0", {}),
    (TESTER_ROW, "127.0.0.31", "GET", "/health", {}),
]


def _stats(admin: str) -> dict[str, int]:
    status, body = http_get(f"http://{admin}/stats?usedonly&filter=inbound_details-v1.rbac")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def test_evaluator_agrees_with_envoy(mesh, tmp_path):
    policy = tmp_path / "table.yaml"
    policy.write_text(TABLE_POLICIES)
    tester = _tester_identity(mesh)
    identities = {TESTER_ROW: tester, **{sid: _identity(mesh, sid) for sid in {row[0] for row in TABLE} - {TESTER_ROW}}}
    admin = mesh.layout.admin[mesh.defs["details-v1"]["node"]]
    try:
        _apply(mesh, policy)
        _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 403, "the table policies")
        before = _stats(admin)
        mismatches, denied_by = [], Counter()
        for identity, source_ip, method, path, headers in TABLE:
            principal = TESTER if identity == TESTER_ROW else naming.principal_of(identity)
            query = [("from", principal), ("to", "details"), ("method", method), ("path", path),
                     ("source_ip", source_ip or "127.0.0.1"), ("host", "details")]
            query += [("header", f"{k}={v}") for k, v in headers.items()]
            with urllib.request.urlopen(urllib.request.Request(
                    f"{mesh.cp_info['http']}/v1/authz/check?{urllib.parse.urlencode(query)}",
                    headers=mesh.auth_headers()), timeout=5) as resp:
                [decision] = json.loads(resp.read())["results"]
            status = _mtls_status(mesh, "details-v1", identities[identity], method, path, headers, source_ip)
            if (status == 403) == decision["allowed"]:
                mismatches.append((principal, source_ip, method, path, headers, status, decision["reason"]))
            if not decision["allowed"]:
                denied_by[f"{decision['policy']}[{decision['rule_index']}]" if decision["policy"] else "allow"] += 1
        assert mismatches == []
        assert 4 <= sum(denied_by.values()) <= len(TABLE) - 4  # the table exercises both verdicts
        after = _stats(admin)

        def delta(name: str) -> int:
            full = f"http.inbound_details-v1.rbac.{name}"
            return after.get(full, 0) - before.get(full, 0)

        # Envoy's counters name the same deciding rules as the evaluator
        for rule in (0, 1):
            key = f"default/details-deny[{rule}]"
            assert delta(f"authz.deny.policy.{key}.denied") == denied_by[key] > 0, key
        assert delta("authz.allow.denied") == denied_by["allow"] > 0
    finally:
        _delete(mesh, policy)
    _converges(lambda: _mtls_status(mesh, "details-v1", tester, path="/details/0") == 200, "the policies to lift")


# --- (f) a policy change reaches requests on connections opened before it --------------------------------

DENY_PAGE = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: productpage-deny-page}
spec:
  selector: {matchLabels: {app: productpage}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/productpage"]}}]
"""
WORKERS = 6
WINDOW_S = 3.0


class _KeepAliveLoad:
    """``WORKERS`` threads, each with one keep-alive connection to the gateway, sending GET /productpage while
    running (:meth:`resume`) and idle while paused (:meth:`pause`): the client connections and the gateway's
    pooled upstream connections to productpage's inbound listener stay open, idle, across a policy change,
    which is when a listener update used to leave them on the old filters. Records (start, worker, status)."""

    def __init__(self, gateway: str):
        self.host, _, port = gateway.split("//", 1)[1].rstrip("/").partition(":")
        self.port = int(port)
        self.results: list[tuple[float, int, int]] = []
        self.reconnects = [0] * WORKERS
        self._stop = threading.Event()
        self._go = threading.Event()
        self._idle = [threading.Event() for _ in range(WORKERS)]
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WORKERS)]

    def _run(self, worker: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        while not self._stop.is_set():
            if not self._go.is_set():
                self._idle[worker].set()
                self._go.wait(0.1)
                continue
            self._idle[worker].clear()
            started = time.monotonic()
            try:
                conn.request("GET", "/productpage?format=json")
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
            if conn.sock is None:
                self.reconnects[worker] += 1
            with self._lock:
                self.results.append((started, worker, status))
            time.sleep(0.01)  # busy, not saturating: the machine runs the whole mesh too
        conn.close()

    def resume(self) -> float:
        self._go.set()
        return time.monotonic()

    def pause(self) -> None:
        self._go.clear()
        for idle in self._idle:
            assert idle.wait(15), "a worker did not finish its request"

    def since(self, t: float) -> list[tuple[float, int, int]]:
        with self._lock:
            return [r for r in self.results if r[0] >= t]

    def __enter__(self) -> "_KeepAliveLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._go.set()
        for t in self._threads:
            t.join(timeout=15)


def _proxy(mesh, node: str) -> dict:
    return next(p for p in mesh.status()["proxies"] if p["node"] == node)


def _acked_after(mesh, node: str, version_before: str) -> float:
    """Wait until ``node``'s Envoy has ACKed a config newer than ``version_before``; the time it was seen."""
    def acked() -> bool:
        p = _proxy(mesh, node)
        return p["synced"] and p["version"] != version_before

    wait_until(acked, 30, f"{node} to ACK the new config", interval=0.05)
    return time.monotonic()


def _gateway_upstream(mesh) -> dict[str, int]:
    status, body = http_get(f"http://{mesh.layout.admin['gw']}/stats?format=json&filter=productpage")
    assert status == 200
    wanted = ("upstream_cx_active", "upstream_cx_total")
    out: dict[str, int] = {}
    for s in json.loads(body)["stats"]:
        if "value" in s and s["name"].startswith("cluster.") and s["name"].rsplit(".", 1)[-1] in wanted:
            key = s["name"].rsplit(".", 1)[-1]
            out[key] = out.get(key, 0) + s["value"]
    return out


def test_policy_changes_apply_to_open_connections(mesh, tmp_path):
    """Regression: policies used to be listener filters, and Envoy kept serving connections accepted before a
    listener update with the old filter chain until they drained, so an idle pooled connection let the next
    request through after the DENY was ACKed. Now the rules come per route (RDS): once the proxy ACKed, no
    request is allowed on any connection, old or new; and once the DENY is deleted, every one passes again."""
    policy = tmp_path / "deny-page.yaml"
    policy.write_text(DENY_PAGE)
    node = mesh.defs["productpage-v1"]["node"]

    def change(apply: bool) -> tuple[list, dict, dict]:
        """Make the change with the pool idle, wait for the ACK, then load every pooled connection again."""
        load.pause()
        time.sleep(0.5)  # nothing in flight: the pool is idle when the config changes
        pool = _gateway_upstream(mesh)
        before = _proxy(mesh, node)["version"]
        (_apply if apply else _delete)(mesh, policy)
        _acked_after(mesh, node, before)
        started = load.resume()
        time.sleep(WINDOW_S)
        return load.since(started), pool, _gateway_upstream(mesh)

    with _KeepAliveLoad(mesh.gateway) as load:
        load.resume()
        wait_until(lambda: len({w for _, w, s in load.since(0) if s == 200}) == WORKERS, 30,
                   "every keep-alive worker to get a 200")
        try:
            denied, pool, after = change(apply=True)
            allowed, pool2, after2 = change(apply=False)
        finally:
            _delete(mesh, policy)  # --ignore-not-found: a no-op when the test got that far
    statuses = Counter(s for _, _, s in denied)
    print(f"after the DENY was ACKed: {dict(statuses)}; gateway pool {pool} -> {after}; "
          f"client reconnects {load.reconnects}")
    assert pool.get("upstream_cx_active", 0) >= 2, pool  # the gateway keeps a pool to productpage
    assert len(denied) >= 2 * WORKERS and len({w for _, w, _ in denied}) == WORKERS
    assert set(statuses) == {403}, statuses  # not one request reached the app, on an old connection or a new one
    # ... and the old connections were used: nothing was drained, so the pool did not have to reconnect
    assert after["upstream_cx_total"] - pool["upstream_cx_total"] < pool["upstream_cx_active"], (pool, after)
    statuses = Counter(s for _, _, s in allowed)
    print(f"after the delete was ACKed: {dict(statuses)}; gateway pool {pool2} -> {after2}")
    assert len(allowed) >= 2 * WORKERS and set(statuses) == {200}, statuses
