"""Two control plane replicas on one Consul (the double, ``--catalog consul --store consul``), one agent
with a real Envoy that finds them in Consul (``--control-plane-from-consul``).

The agent joins its preferred replica A (rendezvous on its node name; A starts first, so Envoy's ADS is on
A too); replica B comes up and is registered; the agent rewrites Envoy's xDS endpoints in place. A is
SIGKILLed (its Consul registration stays passing: the agent must not wait for Consul to notice): Envoy
keeps its listeners, reconnects to B and ACKs a new version from B; the agent's calls move to B and B
signs the new service's SVID. A comes back; B's short maximum stream age closes Envoy's connection and
Envoy reconnects (to A, round robin) without losing its config.

The test registers each replica in Consul itself, with the meta replicas give themselves (ha's
meshcore.controlplane.replicas, on its own branch: once merged, the replicas' own registrations name the
same URLs and the agent counts each replica once).

The CA is shared by the two replicas through one CA state directory (``<B>/ca`` is a link to ``<A>/ca``,
one KEK file): the shared CA in Consul KV is hastate's slice of issue 14, not merged yet.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from meshcore import naming
from meshcore.agent.replicas import (
    AGENT_API_PORT_KEY,
    API_ADDRESS_KEY,
    XDS_ADDRESS_KEY,
    XDS_PORT_KEY,
    Replica,
    rendezvous_order,
)
from meshcore.ca import generate_kek_file
from meshcore.demo.launcher import wait_until

from tests.consul_double import ConsulDouble

from ..e2e._topology import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE = "vm1"
SERVICE = "meshcore-control-plane"
B_MAX_STREAM_AGE = "4s"


class Process:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]):
        self.name, self.log_path = name, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class Replicas:
    """The two control plane processes (ports fixed up front, so one can come back on its own)."""

    def __init__(self, root: Path, consul: str):
        self.root, self.consul = root, consul
        self.kek = root / "kek"
        generate_kek_file(self.kek)
        # Each replica's ports stay bound here until it starts (and again while A is down), so no other
        # process on this shared machine takes them meanwhile.
        self._held: dict[str, list[socket.socket]] = {}
        held = {name: [_bound() for _ in range(3)] for name in ("p", "q")}
        ports = {name: dict(zip(("api", "xds", "http"), (s.getsockname()[1] for s in socks)))
                 for name, socks in held.items()}
        urls = {name: f"https://127.0.0.1:{p['api']}" for name, p in ports.items()}
        # A is the agent's own replica (rendezvous on its node name), B the other one.
        first = rendezvous_order(NODE, [Replica(urls["p"]), Replica(urls["q"])])[0].url
        a, b = ("p", "q") if first == urls["p"] else ("q", "p")
        self.ports = {"A": ports[a], "B": ports[b]}
        self._held = {"A": held[a], "B": held[b]}
        self.procs: dict[str, Process] = {}

    def hold(self, name: str) -> None:
        """Bind ``name``'s ports again (it is down) until it starts."""
        self._held[name] = [_bound(port) for port in self.ports[name].values()]

    def kill(self, name: str) -> None:
        self.procs[name].stop(signal.SIGKILL)
        self.hold(name)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.ports[name]['api']}"

    def xds(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]['xds']}"

    def state(self, name: str) -> Path:
        return self.root / name

    def start(self, name: str) -> None:
        state = self.state(name)
        state.mkdir(exist_ok=True)
        if name == "B" and not (state / "ca").exists():
            (state / "ca").symlink_to(self.state("A") / "ca")  # one CA for both (see the module docstring)
        (state / "controlplane.json").unlink(missing_ok=True)
        p = self.ports[name]
        for sock in self._held.pop(name, []):
            sock.close()
        argv = [sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(state), "--catalog", "consul",
                "--store", "consul", "--kek-file", str(self.kek), "--xds-bind", f"127.0.0.1:{p['xds']}",
                "--api-bind", f"127.0.0.1:{p['api']}", "--http-bind", f"127.0.0.1:{p['http']}",
                "--leaf-ttl", "1h", "--collect-interval", "60s"]
        if name == "B":
            argv += ["--max-stream-age", B_MAX_STREAM_AGE]
        self.procs[name] = Process(name, argv, self.root / f"{name}.log", {"CONSUL_HTTP_ADDR": self.consul})
        proc = self.procs[name]

        def started() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"replica {name} exited ({proc.popen.returncode}):\n{proc.log()[-3000:]}")
            return (state / "controlplane.json").exists()

        wait_until(started, 60, f"replica {name} to start")
        body = {"Name": SERVICE, "ID": f"{SERVICE}-{name}", "Address": "127.0.0.1", "Port": p["api"],
                "Meta": {API_ADDRESS_KEY: self.url(name), XDS_ADDRESS_KEY: self.xds(name),
                         AGENT_API_PORT_KEY: str(p["api"]), XDS_PORT_KEY: str(p["xds"])},
                "Check": {"CheckID": f"{SERVICE}-{name}-ttl", "TTL": "10m", "Status": "passing"}}
        requests.put(f"{self.consul}/v1/agent/service/register", json=body, timeout=5).raise_for_status()

    def operator(self, name: str, method: str, path: str, body: dict | None = None):
        token = (self.state(name) / "admin.token").read_text().strip()
        info = json.loads((self.state(name) / "controlplane.json").read_text())
        req = urllib.request.Request(info["http"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        for socks in self._held.values():
            for sock in socks:
                sock.close()


def _bound(port: int = 0) -> socket.socket:
    """A socket bound to ``port`` on loopback (not listening): the port is ours until it is closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _add_service(services_dir: Path, name: str) -> None:
    """A service definition the agent registers in Consul (writing its pending SVID file first)."""
    body = {"service": {"name": name, "id": f"{name}-1", "port": free_port("127.0.0.1"), "address": "127.0.0.1",
                        "connect": {"sidecar_service": {"port": free_port("127.0.0.1")}}}}
    (services_dir / f"{name}.json").write_text(json.dumps(body))


def _admin(admin: str, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def _xds_upstream(admin: str) -> set[str]:
    """The replicas (xDS host:port) Envoy holds an open connection to."""
    hits = re.findall(rf"^{naming.XDS_CLUSTER}::([\d.]+:\d+)::cx_active::([1-9]\d*)$", _admin(admin, "/clusters"),
                      re.MULTILINE)
    return {host for host, _ in hits}


def _stat(admin: str, name: str) -> int:
    match = re.search(rf"^{re.escape(name)}: (\d+)$", _admin(admin, f"/stats?filter=^{re.escape(name)}$"), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _listeners(admin: str) -> set[str]:
    """Names of Envoy's active listeners (``/listeners`` lines are ``name::address``)."""
    return {line.split("::")[0] for line in _admin(admin, "/listeners").split()}


def _synced_on(replicas: Replicas, name: str) -> bool:
    return any(p.get("node") == NODE and p.get("synced") for p in replicas.operator(name, "GET", "/v1/proxies"))


def _status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica-failover")
    double = ConsulDouble(node=NODE)
    consul = double.start()
    replicas = Replicas(root, consul)
    agent = None
    try:
        replicas.start("A")
        services_dir = root / "consul.d"
        services_dir.mkdir()
        _add_service(services_dir, "web")
        token = replicas.operator("A", "POST", "/v1/tokens", {"node": NODE, "ttl": "10m"})["token"]
        (root / "token").write_text(token)
        admin = f"127.0.0.1:{free_port('127.0.0.1')}"
        agent_state = root / "agent"
        agent = Process("agent", [
            sys.executable, "-m", "meshcore.agent", "--node", NODE, "--control-plane-from-consul",
            "--ca-file", str(replicas.state("A") / "ca" / "bundle.pem"), "--join-token-file", str(root / "token"),
            "--state-dir", str(agent_state), "--admin", admin, "--metrics-bind", "off",
            "--refresh-interval", "1s", "--envoy-log", str(root / "envoy.log"),
            "--consul-services-dir", str(services_dir)],
            root / "agent.log", {"CONSUL_HTTP_ADDR": consul})
        wait_until(lambda: _synced_on(replicas, "A") and naming.inbound_listener("web-1") in _listeners(admin), 90,
                   "envoy to be synced on replica A with the web listener")
        yield {"replicas": replicas, "consul": consul, "admin": admin, "agent": agent, "state": agent_state,
               "services_dir": services_dir}
    except BaseException:
        for log in sorted(root.glob("*.log")):
            print(f"----- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        if agent is not None:
            agent.stop()
        replicas.stop_all()
        double.stop()


def test_envoy_and_the_agent_keep_the_mesh_synced_when_the_replica_they_are_on_is_killed(mesh):
    replicas, admin, state = mesh["replicas"], mesh["admin"], mesh["state"]
    assert _xds_upstream(admin) == {replicas.xds("A")}
    assert _status(state)["control_plane"]["address"] == replicas.url("A")
    wait_until(lambda: _status(state)["envoy"]["xds_upstream"] == [replicas.xds("A")], 30,
               "the agent's status to name A as Envoy's xDS replica")

    replicas.start("B")  # the agent follows Consul: Envoy's xDS endpoints now list both, rewritten in place
    endpoints = state / "envoy" / "xds" / "endpoints.json"
    wait_until(lambda: replicas.xds("B").split(":")[1] in endpoints.read_text(), 30, "B in envoy's xds endpoints")
    starts = _status(state)["envoy"]["starts"]
    assert _xds_upstream(admin) == {replicas.xds("A")}  # the stream stayed where it was
    lds_before = _stat(admin, "listener_manager.lds.update_success")

    replicas.kill("A")
    killed = time.monotonic()
    wait_until(lambda: replicas.xds("B") in _xds_upstream(admin), 30, "envoy to reconnect to replica B")
    reconnected = time.monotonic() - killed
    wait_until(lambda: _synced_on(replicas, "B"), 30, "envoy to be synced on replica B")
    synced = time.monotonic() - killed
    assert naming.inbound_listener("web-1") in _listeners(admin)  # kept its config throughout

    _add_service(mesh["services_dir"], "api")  # a change only B can push (and sign)
    changed = time.monotonic()
    wait_until(lambda: naming.inbound_listener("api-1") in _listeners(admin) and _synced_on(replicas, "B"), 60,
               "envoy to ACK the new listener from replica B")
    pushed = time.monotonic() - changed
    def api_svid(status: dict) -> str | None:
        return next((s["serial"] for s in status.get("services", []) if s["name"] == "api"), None)

    # status.json follows within a loop round: B signed the new service's SVID (shared CA), and the agent
    # names B as its replica and as Envoy's xDS replica
    wait_until(lambda: api_svid(_status(state)) and _status(state)["envoy"]["xds_upstream"] == [replicas.xds("B")],
               30, "the agent's status to show the api SVID and Envoy on B")
    status = _status(state)
    assert status["control_plane"]["address"] == replicas.url("B")
    by_url = {r["url"]: r for r in status["control_plane"]["replicas"]}
    assert by_url[replicas.url("B")]["current"] and by_url[replicas.url("A")]["failures"] >= 1
    assert status["envoy"]["starts"] == starts  # no Envoy restart for any of it
    assert _stat(admin, "listener_manager.lds.update_rejected") == 0
    assert _stat(admin, "listener_manager.lds.update_success") > lds_before

    # A returns; B closes Envoy's connection at its maximum stream age and Envoy goes back to A (round robin)
    replicas.start("A")
    returned = time.monotonic()
    wait_until(lambda: replicas.xds("A") in _xds_upstream(admin) and _synced_on(replicas, "A"), 60,
               f"envoy to move back to replica A (B's max stream age {B_MAX_STREAM_AGE})")
    moved_back = time.monotonic() - returned
    assert {naming.inbound_listener("web-1"), naming.inbound_listener("api-1")} <= _listeners(admin)
    assert _stat(admin, "listener_manager.lds.update_rejected") == 0
    assert _status(state)["envoy"]["starts"] == starts
    print(f"replica failover: envoy reconnected to B {reconnected:.2f}s after A was SIGKILLed, synced on B after "
          f"{synced:.2f}s; a new listener from B ACKed {pushed:.2f}s after its registration; back on A "
          f"{moved_back:.2f}s after A returned (B's max stream age {B_MAX_STREAM_AGE})")
