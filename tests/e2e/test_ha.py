"""End to end: three control plane replicas on one Consul double (``--store consul``) and a small mesh under
steady traffic, through the whole failover sequence of issue 14: SIGKILL the leader, then the new leader, then
restart both. At each step: no request fails, another replica leads within the check TTL + the lock-delay + a
few seconds, a join and CSR signings succeed (through the agent API's failover client, over every replica's
URL, dead ones included). A root rotation started just before the first kill completes afterwards (activated
by the new leader once the VM's agent holds the new bundle, then finished), and an alert that starts firing
during the first failover notifies the webhook once, across both failovers.

The mesh is one VM (productpage -> details, reviews; the ingress gateway) registered by its agent in the
Consul double. Its agent finds the replicas through Consul (``--control-plane-from-consul``) beside the mesh's
own control plane cp-b; cp-a (started first: the first leader) and cp-c are processes of this module. Shared
through Consul: the leader lock, the replica registrations, the resources, the CA, join and operator tokens,
the alert record and which nodes hold the trust bundle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.client import FailoverClient
from meshcore.agent.replicas import ReplicaSet
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.demo.launcher import LocalMesh, MeshLayout, http_get, wait_until
from meshcore.errors import AgentRequestError
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
        self.api = f"https://{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}"
        log = open(state / "logs" / f"{name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(self.state_dir), "--catalog", "consul",
             "--kek-file", str(kek), "--replica-id", name, "--http-bind", self.http,
             "--xds-bind", f"{CONTROL_PLANE}:{free_port(CONTROL_PLANE)}", "--api-bind", self.api.split("//", 1)[1]],
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


class Fleet:
    """The three replicas as one thing to ask: cp-a and cp-c (:class:`Replica`), cp-b (the mesh's own control
    plane, the process ``controlplane`` of the LocalMesh). Operator calls go to the first live one."""

    def __init__(self, mesh: LocalMesh, replicas: dict[str, Replica]):
        self.mesh, self.replicas, self.down = mesh, replicas, set()
        self.api_urls = {mesh.cp_info["api"], *(r.api for r in replicas.values())}  # every URL ever served

    def alive(self) -> list[str]:
        return [n for n in ("cp-a", "cp-b", "cp-c") if n not in self.down]

    def _http(self, name: str) -> str:
        return self.mesh.cp_info["http"] if name == "cp-b" else f"http://{self.replicas[name].http}"

    def state_dir(self, name: str) -> Path:
        return self.mesh.state / "controlplane" if name == "cp-b" else self.replicas[name].state_dir

    def call(self, method: str, path: str, body: dict | None = None, on: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {_admin_token(self.mesh.state)}", "Content-Type": "application/json"}
        errors = []
        for name in [on] if on else self.alive():
            req = urllib.request.Request(self._http(name) + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"{method} {path} on {name}: {exc.code} {exc.read()[:300]!r}") from None
            except OSError as exc:  # a replica starting or just killed: the next one answers
                errors.append(f"{name}: {exc}")
        raise AssertionError(f"{method} {path}: no replica answered: {errors}")

    def status(self, on: str | None = None) -> dict:
        return self.call("GET", "/v1/status", on=on)["control_plane"]

    def ca(self) -> dict:
        return self.call("GET", "/v1/ca")

    def leader(self) -> str:
        return self.status()["leader"]

    def healthy(self) -> list[str]:
        return sorted(r["id"] for r in self.status().get("replicas", []) if r["healthy"])

    def kill(self, name: str) -> None:
        """SIGKILL a replica (its whole process group: nothing gets to clean up)."""
        self.down.add(name)
        if name == "cp-b":
            assert self.mesh.stop("controlplane", sig=signal.SIGKILL)
        else:
            self.replicas[name].kill()

    def restart(self, name: str) -> None:
        """Start a killed replica again on its state directory (cp-b on its ports, the others on new ones)."""
        if name == "cp-b":
            self.mesh.start_control_plane()
        else:
            self.replicas[name] = Replica(name, self.mesh.state, self.mesh.env, self.mesh.kek)
            self.api_urls.add(self.replicas[name].api)
        self.down.discard(name)

    def wait_new_leader(self, old: str, since: float) -> tuple[str, float]:
        """Until a replica other than ``old`` leads; the new leader and how long it took since ``since``."""
        wait_until(lambda: self.leader() not in ("", old), 40, f"a new leader after {old}")
        took = time.monotonic() - since
        leader = self.leader()
        print(f"new leader {leader} {took:.1f}s after {old} was killed "
              f"(check TTL {CHECK_TTL_S:g}s + lock-delay {LOCK_DELAY_S:g}s)")
        assert LOCK_DELAY_S <= took <= CHECK_TTL_S + LOCK_DELAY_S + 8, took
        return leader, took


class Joiner:
    """New VMs joining during the failovers, as an agent does: a join token from the operator API of any live
    replica, then the agent API through :class:`FailoverClient` over every replica URL known (dead ones too,
    in each node's own rendezvous order): a join, then node-certificate renewals (CSR signings)."""

    def __init__(self, fleet: Fleet, workdir: Path):
        self.fleet, self.dir = fleet, workdir
        self.dir.mkdir()
        self.joined: list[str] = []

    def _client(self, node: str, authenticated: bool) -> FailoverClient:
        live = self.fleet.alive()[0]
        bundle = self.dir / "bundle.pem"  # the current trust bundle (two roots while a rotation runs)
        bundle.write_text((self.fleet.state_dir(live) / "ca" / "bundle.pem").read_text())
        files = {"cert_file": self.dir / f"{node}.crt", "key_file": self.dir / f"{node}.key"} if authenticated else {}
        return FailoverClient(ReplicaSet(node=node, urls=tuple(sorted(self.fleet.api_urls))), bundle, **files)

    def _csr(self, node: str) -> tuple[str, str]:
        """A CSR for ``node``'s identity and its new key (PEM), written once the certificate is issued."""
        key = new_private_key()
        return make_csr(key, naming.node_spiffe_id("cluster.local", node)), key_to_pem(key)

    def _keep(self, node: str, chain: str, key_pem: str) -> None:
        (self.dir / f"{node}.crt").write_text(chain)
        (self.dir / f"{node}.key").write_text(key_pem)

    def _renew(self, node: str, csr: str):
        deadline = time.monotonic() + 20
        while True:
            with self._client(node, authenticated=True) as client:
                try:
                    return client.renew_node(csr)
                except AgentRequestError as exc:  # the replica has not read the catalog change yet (blocking query)
                    if "not in the catalog" not in str(exc) or time.monotonic() > deadline:
                        raise
            time.sleep(0.2)

    def join_and_renew(self, node: str) -> None:
        """Join ``node``, then renew the node certificate of every node joined so far (``node`` included)."""
        # the VM is in Consul's catalog first (its Consul agent registers it): a node not in it gets no renewal
        self.fleet.mesh.consul.state.catalog_register({"Node": node, "Address": loopback(60 + len(self.joined))})
        token = self.fleet.call("POST", "/v1/tokens", {"node": node, "ttl": "10m"})["token"]
        csr, key_pem = self._csr(node)
        with self._client(node, authenticated=False) as client:
            issued = client.join(node, token, csr)
        self._keep(node, issued.chain, key_pem)
        self.joined.append(node)
        for n in self.joined:
            csr, key_pem = self._csr(n)
            renewed = self._renew(n, csr)
            assert renewed.spiffe_id == naming.node_spiffe_id("cluster.local", n)
            self._keep(n, renewed.chain, key_pem)


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
    m = None
    try:
        wait_until(lambda: replicas["cp-a"].status()["leader"] == "cp-a", 60, "cp-a to lead (see logs/cp-a.log)")
        layout = MeshLayout(
            state_dir=state, catalog_dir=state / "consul.d", catalog_source="consul",
            # the agent finds the replicas in Consul (beside cp-b, the --control-plane LocalMesh gives it)
            env={**env, "MESHCORE_REPLICA_ID": "cp-b", "MESHCORE_AGENT_CONTROL_PLANE_FROM_CONSUL": "meshcore-control-plane"},
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
        m.wait_synced = lambda timeout=60: _wait_synced_anywhere(m, timeout)
        with serving(m, artifacts="e2e-ha-logs"):
            m.fleet = Fleet(m, replicas)
            yield m
    finally:
        for r in replicas.values():
            r.kill(signal.SIGTERM)
        webhook.server.shutdown()
        double.stop()


def _wait_synced_anywhere(mesh: LocalMesh, timeout: float) -> None:
    """The VM's Envoy received and ACKed its config from whichever replica it streams from (its agent ranks
    the replicas it found in Consul: not necessarily cp-b, the one LocalMesh itself asks)."""
    def synced() -> bool:
        for r in (mesh.replicas["cp-a"], mesh.replicas["cp-c"]):
            status, body = http_get(f"http://{r.http}/v1/status",
                                    headers={"Authorization": f"Bearer {_admin_token(mesh.state)}"})
            if status == 200 and any(p["node"] == NODE and p.get("synced") for p in json.loads(body)["proxies"]):
                return True
        return any(p["node"] == NODE and p.get("synced") for p in mesh.status()["proxies"])

    wait_until(synced, timeout, f"{NODE}'s Envoy to receive and ACK its config from a replica")


def _agent_status(ha) -> dict:
    return json.loads((ha.state / "nodes" / NODE / "status.json").read_text())


def _agent_group(ha) -> int:
    (pid,) = [p["pid"] for p in ha.processes if p["name"] == f"agent-{NODE}"]
    return pid


def test_sigkill_the_leader_then_another_then_restart_both_under_traffic(ha):
    fleet = ha.fleet
    cp = fleet.status(on="cp-b")
    assert cp["replica"] == "cp-b" and cp["leader"] == "cp-a" and cp["leadership"] == "consul"
    wait_until(lambda: fleet.healthy() == ["cp-a", "cp-b", "cp-c"], 30, "three healthy replicas")
    [a] = [r for r in fleet.status()["replicas"] if r["id"] == "cp-a"]
    assert a["leader"] and a["http_port"] and a["xds_port"] and a["version"]
    # the agent found every replica through Consul (and Envoy's ADS cluster lists them all)
    wait_until(lambda: len([r for r in _agent_status(ha)["control_plane"]["replicas"] if r["source"] == "consul"])
               == 3, 30, "the agent to list the three replicas from Consul")
    joiner = Joiner(fleet, ha.state / "joined")
    agent = _agent_group(ha)

    with SteadyTraffic(ha.url) as traffic:
        traffic.wait_for(20)

        # --- step 1: a root rotation is being prepared (the VM's agent, paused, does not hold the new bundle
        # yet, so the step waits), an alert starts firing, and the leader dies
        os.killpg(agent, signal.SIGSTOP)  # its Envoy runs on (a session of its own) and keeps serving
        try:
            meshctl(ha, "ca", "rotate")
            wait_until(lambda: NODE in fleet.ca().get("nodes_without_bundle", []), 30,
                       f"the rotation to wait for {NODE}'s agent")
            fleet.kill("cp-a")
            killed = time.monotonic()
            ha.consul.state.kv_put(NONSENSE_KEY, json.dumps(NONSENSE).encode(), 0, None)  # fires on every replica
            joiner.join_and_renew("vm-join-1")  # serving and signing need no leader
            first, _ = fleet.wait_new_leader("cp-a", killed)
            assert fleet.ca()["phase"] == "preparing"  # still waiting for the VM
        finally:
            os.killpg(agent, signal.SIGCONT)
        # the new leader moves the rotation on once the agent reports the two-root bundle (to any replica)
        wait_until(lambda: fleet.ca()["phase"] == "rotating", 60, "the new leader to activate the rotation")
        wait_until(lambda: ha.webhook.firing(ALERT), 30, f"the {ALERT} notification")
        traffic.wait_for(30)
        wait_until(lambda: "cp-a" not in fleet.healthy(), 15, "cp-a shown unhealthy")
        out = meshctl(ha, "status").stdout if "cp-b" in fleet.alive() else ""
        assert not out or (f"leader {first}" in out and "UNHEALTHY" in out), out

        # --- step 2: the new leader dies too; the last replica leads (and must not notify the alert again)
        fleet.kill(first)
        killed = time.monotonic()
        joiner.join_and_renew("vm-join-2")  # from the new root now
        (last,) = fleet.alive()
        second, _ = fleet.wait_new_leader(first, killed)
        assert second == last
        traffic.wait_for(30)
        _, metrics = http_get(fleet._http(last) + "/metrics")
        assert "meshcore_leader 1.0" in metrics.decode()
        ha.consul.state.kv_delete(NONSENSE_KEY, False, None)

        # --- step 3: both come back (same state directories): registered, healthy, following the leader
        fleet.restart("cp-a")
        fleet.restart(first)
        joiner.join_and_renew("vm-join-3")
        wait_until(lambda: fleet.healthy() == ["cp-a", "cp-b", "cp-c"], 60, "cp-a and the other registered again")
        for name in ("cp-a", first):
            wait_until(lambda name=name: fleet.status(on=name)["leader"] == second, 30, f"{name} to follow {second}")
        # the rotation started before the first kill completes: every certificate renewed from the new root,
        # then finished (the old root leaves the bundle)
        left: list = []

        def all_renewed() -> bool:
            left[:] = fleet.ca()["old_root_certificates"]
            return left == []

        try:  # agents renew on their refresh, after backoffs from the kills: generous on a loaded machine
            wait_until(all_renewed, 120, "every certificate on the new root")
        except Exception as exc:
            raise AssertionError(f"certificates still on the old root: {left}") from exc
        done = fleet.call("POST", "/v1/ca/rotate", {"finish": True})
        assert done["phase"] == "idle" and [r["role"] for r in done["roots"]] == ["current"], done
        traffic.wait_for(30)
    print(f"traffic: {traffic.ok} ok, {len(traffic.failed)} failed {traffic.failed[:3]}")
    assert traffic.failed == []
    assert len(ha.webhook.firing(ALERT)) == 1, ha.webhook.firing(ALERT)  # one notification over both failovers
