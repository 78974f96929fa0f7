"""End to end: three control plane replicas on one Consul double (``--store consul``) and a small mesh under
steady traffic. SIGKILL the leader: another replica leads within the check TTL + the lock-delay + a few
seconds, an alert that starts firing during the failover notifies the webhook once, no request fails.

The mesh is one VM (productpage -> details, reviews; the ingress gateway) registered by its agent in the
Consul double. Its agent talks to replica cp-b; cp-a (the first leader, killed) and cp-c serve no agent:
agents finding and failing over between replicas is the agent side's work, so the traffic check covers
losing the *leader*, not the replica an agent streams from. The replicas keep their CA and join tokens in
their own state directories until that state moves into Consul KV; only the leader lock, the replica
registrations, the resources and the alert notification record are shared through Consul here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from tests.consul_double.server import ConsulDouble

from ._topology import CONTROL_PLANE, free_port, loopback, meshctl, serving
from ._traffic import SteadyTraffic

NODE, HOST = "vm-ha", loopback(34)
CHECK_TTL_S, LOCK_DELAY_S = 2.0, 3.0
NONSENSE = {"apiVersion": "security.mesh.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "nonsense", "namespace": "default"}, "spec": {"selector": "x"}}
NONSENSE_KEY = "meshcore/resources/AuthorizationPolicy/default/nonsense"
ALERT = "ResourcesRejected"


class Webhook:
    """Records every Alertmanager payload POSTed to it (a test webhook on loopback)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((CONTROL_PLANE, 0), Handler)
        self.url = f"http://{CONTROL_PLANE}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str) -> list[dict]:
        return [b for b in self.bodies if b["status"] == "firing"
                and any(a["labels"].get("alertname") == alertname for a in b["alerts"])]


def _write_vm(node_dir: Path) -> int:
    """The VM's service definitions (for its agent to register in Consul); returns the ingress port."""
    def svc(name: str, upstreams=()):
        ups = [{"destination_name": u, "local_bind_address": HOST, "local_bind_port": free_port(HOST)} for u in upstreams]
        body = {"name": name, "id": f"{name}-v1", "port": free_port(HOST), "meta": {"version": "v1"},
                "connect": {"sidecar_service": {"port": free_port(HOST),
                                                "proxy": {"local_service_address": HOST, "upstreams": ups}}}}
        (node_dir / f"{name}-v1.json").write_text(json.dumps({"service": body}))

    node_dir.mkdir(parents=True)
    (node_dir / "node.json").write_text(json.dumps({"node_name": NODE, "advertise_addr": HOST}))
    svc("productpage", ["details", "reviews"])
    svc("details")
    svc("reviews")
    gw_port = free_port(HOST)
    (node_dir / "ingress-gateway.json").write_text(json.dumps({"service": {
        "name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": gw_port,
        "proxy": {"upstreams": [{"destination_name": "productpage", "local_bind_address": HOST,
                                 "local_bind_port": gw_port}]}}}))
    return gw_port


def _admin_token(state: Path) -> str:
    """The operator tokens are shared in Consul KV: the first replica to start writes admin.token on its host,
    and that token works on every replica (as an operator copies it to the hosts they work from)."""
    (token,) = {p.read_text().strip() for p in state.glob("*/admin.token")}
    return token


class Replica:
    """One more control plane process (cp-a, cp-c) beside the mesh's own (cp-b), in a state directory of its own."""

    def __init__(self, name: str, state: Path, env: dict[str, str], kek: Path):
        self.name = name
        self.state_dir = state / name
        self.state_dir.mkdir(parents=True, exist_ok=True)  # a restart keeps its state directory
        self.http = f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}"
        log = open(state / "logs" / f"{name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(self.state_dir), "--catalog", "consul",
             "--kek-file", str(kek), "--replica-id", name, "--http-bind", self.http,
             "--xds-bind", f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
             "--api-bind", f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **env})
        log.close()

    def status(self) -> dict:
        token = _admin_token(self.state_dir.parent)
        status, body = http_get(f"http://{self.http}/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        return json.loads(body)["control_plane"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    double = ConsulDouble(node=NODE, node_address=HOST)
    address = double.start()
    webhook = Webhook()
    state = tmp_path_factory.mktemp("ha-mesh")
    (state / "logs").mkdir()
    gw_port = _write_vm(state / "consul.d" / NODE)
    env = {"CONSUL_HTTP_ADDR": address, "MESHCORE_STORE": "consul", "MESHCORE_ALERT_WEBHOOKS": webhook.url,
           "MESHCORE_COLLECT_INTERVAL": "1s", "MESHCORE_LEADER_LOCK_TTL": "10s",
           "MESHCORE_LEADER_LOCK_DELAY": f"{LOCK_DELAY_S:g}s", "MESHCORE_REPLICA_CHECK_TTL": f"{CHECK_TTL_S:g}s"}
    from meshcore.ca import generate_kek_file

    kek = state / "kek"
    generate_kek_file(kek)  # the same KEK on every replica, as on every control plane host
    replicas = {"cp-a": Replica("cp-a", state, env, kek)}  # started first: it becomes the leader
    try:
        wait_until(lambda: replicas["cp-a"].status()["leader"] == "cp-a", 60, "cp-a to lead (see logs/cp-a.log)")
        layout = MeshLayout(
            state_dir=state, catalog_dir=state / "consul.d", catalog_source="consul",
            env={**env, "MESHCORE_REPLICA_ID": "cp-b"},
            xds_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", api_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}",
            http_bind=f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", admin={NODE: f"{HOST}:{free_port(HOST)}"},
            agent_refresh="2s")
        (state / "controlplane").mkdir(exist_ok=True)  # the mesh's own control plane (cp-b) and its callers
        token_file = state / "controlplane" / "admin.token"
        token_file.write_text(_admin_token(state) + "\n")
        token_file.chmod(0o600)
        m = LocalMesh(layout, progress=lambda msg: print("ha mesh:", msg, flush=True))
        m.state, m.consul, m.webhook, m.replicas, m.env, m.kek = state, double, webhook, replicas, env, kek
        m.url = f"http://{HOST}:{gw_port}/productpage?format=json"
        replicas["cp-c"] = Replica("cp-c", state, env, kek)
        with serving(m, artifacts="e2e-ha-logs"):
            yield m
    finally:
        for r in replicas.values():
            r.kill(signal.SIGTERM)
        webhook.server.shutdown()
        double.stop()


def test_leader_sigkill_fails_over_within_the_lock_delay_and_notifies_once(ha):
    cp = ha.status()["control_plane"]
    assert cp["replica"] == "cp-b" and cp["leader"] == "cp-a" and cp["leadership"] == "consul"
    wait_until(lambda: sorted(r["id"] for r in ha.status()["control_plane"].get("replicas", [])
                              if r["healthy"]) == ["cp-a", "cp-b", "cp-c"], 30, "three healthy replicas")
    [a] = [r for r in ha.status()["control_plane"]["replicas"] if r["id"] == "cp-a"]
    assert a["leader"] and a["http_port"] and a["xds_port"] and a["version"]
    with SteadyTraffic(ha.url) as traffic:
        traffic.wait_for(20)
        ha.replicas["cp-a"].kill()
        killed = time.monotonic()
        # an alert starts firing during the failover, on every replica: a malformed resource in KV
        ha.consul.state.kv_put(NONSENSE_KEY, json.dumps(NONSENSE).encode(), 0, None)
        # serving needs no leader: the surviving replica's operator API issues a join token meanwhile
        assert ha._post("/v1/tokens", {"node": "vm-later", "ttl": "10m"})["token"]
        wait_until(lambda: ha.status()["control_plane"]["leader"] in ("cp-b", "cp-c"), 30, "a new leader")
        took = time.monotonic() - killed
        print(f"new leader {ha.status()['control_plane']['leader']} {took:.1f}s after the SIGKILL "
              f"(check TTL {CHECK_TTL_S:g}s + lock-delay {LOCK_DELAY_S:g}s)")
        assert LOCK_DELAY_S <= took <= CHECK_TTL_S + LOCK_DELAY_S + 8, took
        wait_until(lambda: ha.webhook.firing(ALERT), 30, f"the {ALERT} notification")
        traffic.wait_for(30)
        time.sleep(3)  # three evaluations on each replica: a second notification would be here by now
    print(f"traffic: {traffic.ok} ok, {len(traffic.failed)} failed {traffic.failed[:3]}")
    assert traffic.failed == []
    assert len(ha.webhook.firing(ALERT)) == 1, ha.webhook.firing(ALERT)
    wait_until(lambda: not any(r["healthy"] for r in ha.status()["control_plane"]["replicas"] if r["id"] == "cp-a"),
               15, "cp-a shown unhealthy")
    ha.consul.state.kv_delete(NONSENSE_KEY, False, None)
    leader = ha.status()["control_plane"]["leader"]
    _, metrics = http_get(ha.cp_info["http"] + "/metrics")
    assert f"meshcore_leader {1.0 if leader == 'cp-b' else 0.0}" in metrics.decode()  # cp-b's own view
    out = meshctl(ha, "status").stdout
    assert f"leader {leader}" in out and "UNHEALTHY" in out, out  # meshctl status: the leader, cp-a's health

    # the killed replica comes back (same state directory): registered and healthy again, following the leader
    ha.replicas["cp-a"] = Replica("cp-a", ha.state, ha.env, ha.kek)
    wait_until(lambda: sorted(r["id"] for r in ha.status()["control_plane"]["replicas"] if r["healthy"])
               == ["cp-a", "cp-b", "cp-c"], 60, "cp-a registered and healthy again")
    cp_a = ha.replicas["cp-a"].status()
    assert cp_a["leader"] == leader and cp_a["replica"] == "cp-a"
