"""The lab's Consul stand-in puts each host's agent registrations on that host's node (no root needed)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest

from tests.consul_double._http import AclConfig
from tests.lab.consul_stand_in import ByPeerServer, MultiAgentState


@pytest.fixture()
def stand_in():
    state = MultiAgentState("cp", "dc1", "127.0.0.1", {"vm1": "127.0.0.2"})
    server = ByPeerServer(("127.0.0.1", 0), state, AclConfig(), {"127.0.0.2": "vm1"})
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    state.close()
    server.shutdown()
    server.server_close()


def _call(addr: str, method: str, path: str, body=None, source: str = "127.0.0.1"):
    host, port = addr.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    data = json.dumps(body).encode() if body is not None else b""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                 .encode() + data)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", head
    return json.loads(payload) if payload else None


def test_registration_lands_on_the_callers_node(stand_in):
    svc = {"Name": "details", "ID": "details-vm1", "Port": 9081,
           "Connect": {"SidecarService": {"Port": 21001}}}
    _call(stand_in, "PUT", "/v1/agent/service/register", svc, source="127.0.0.2")
    _call(stand_in, "PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-cp", "Port": 80})
    nodes = {n["Node"]: n["Address"] for n in _call(stand_in, "GET", "/v1/catalog/nodes")}
    assert nodes == {"cp": "127.0.0.1", "vm1": "127.0.0.2"}
    on_vm1 = _call(stand_in, "GET", "/v1/catalog/node/vm1")["Services"]
    assert set(on_vm1) == {"details-vm1", "details-vm1-sidecar-proxy"}
    # each agent lists only its own services
    assert set(_call(stand_in, "GET", "/v1/agent/services", source="127.0.0.2")) == {
        "details-vm1", "details-vm1-sidecar-proxy"}
    assert "details-vm1" not in _call(stand_in, "GET", "/v1/agent/services")
    self_vm1 = _call(stand_in, "GET", "/v1/agent/self", source="127.0.0.2")
    assert self_vm1["Config"]["NodeName"] == "vm1"
    _call(stand_in, "PUT", "/v1/agent/service/deregister/details-vm1", source="127.0.0.2")
    assert "details-vm1" not in _call(stand_in, "GET", "/v1/catalog/node/vm1")["Services"]


def test_node_maintenance_makes_the_callers_node_critical(stand_in):
    svc = {"Name": "details", "ID": "details-vm1", "Port": 9081}
    _call(stand_in, "PUT", "/v1/agent/service/register", svc, source="127.0.0.2")
    _call(stand_in, "PUT", "/v1/agent/maintenance?enable=true&reason=upgrade", source="127.0.0.2")
    checks = {c["CheckID"]: c for c in _call(stand_in, "GET", "/v1/health/node/vm1")}
    assert checks["_node_maintenance"]["Status"] == "critical"
    assert _call(stand_in, "GET", "/v1/health/service/details?passing") == []
    assert "_node_maintenance" not in {c["CheckID"] for c in _call(stand_in, "GET", "/v1/health/node/cp")}
    _call(stand_in, "PUT", "/v1/agent/maintenance?enable=false", source="127.0.0.2")
    assert [e["Service"]["ID"] for e in _call(stand_in, "GET", "/v1/health/service/details?passing")] == [
        "details-vm1"]


def test_wan_joined_stand_ins_relay_the_other_datacenter():
    """Two stand-ins (the two-datacenter lab: one per datacenter) joined with --wan: ?dc= reaches the other."""
    from tests.consul_double._wan import WanPeers

    servers, addrs = [], {}
    for dc, node in (("dc1", "cp"), ("dc2", "cp3")):
        state = MultiAgentState(node, dc, "127.0.0.1", {})
        wan = WanPeers()
        server = ByPeerServer(("127.0.0.1", 0), state, AclConfig(), {}, wan)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append((state, server, wan))
        addrs[dc] = f"127.0.0.1:{server.server_address[1]}"
    servers[0][2].add("dc2", f"http://{addrs['dc2']}")
    servers[1][2].add("dc1", f"http://{addrs['dc1']}")
    try:
        _call(addrs["dc2"], "PUT", "/v1/agent/service/register", {"Name": "store", "ID": "store-cp3", "Port": 80})
        assert _call(addrs["dc1"], "GET", "/v1/catalog/datacenters") == ["dc1", "dc2"]
        assert [n["Node"] for n in _call(addrs["dc1"], "GET", "/v1/catalog/nodes?dc=dc2")] == ["cp3"]
        assert "store" in _call(addrs["dc1"], "GET", "/v1/catalog/services?dc=dc2")
        assert "store" not in _call(addrs["dc1"], "GET", "/v1/catalog/services")
    finally:
        for state, server, _ in servers:
            state.close()
            server.shutdown()
            server.server_close()


def test_sighup_rereads_the_config_file_without_losing_the_catalog_or_kv(tmp_path):
    """As `consul reload`: an agent and a WAN peer added to --config take effect on SIGHUP, in the same process,
    with what it held (a registration, a KV entry) intact; a broken file is refused and the old one kept."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from meshcore.demo._guard import die_with_parent

    from tests.policies._catalog import free_port

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "stand-in.json"
    config.write_text(json.dumps({"agents": {"vm1": "127.0.0.2"}, "wan": {}}))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = tmp_path / "stand-in.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(die_with_parent([sys.executable, "-m", "tests.lab.consul_stand_in", "--bind", addr,
                                                 "--node", "cp", "--config", str(config)]),
                                cwd=root, stdout=out, stderr=subprocess.STDOUT, text=True)

    def until(what, fn, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if fn():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{what}: not within {timeout:.0f}s")

    try:
        until("the stand-in answers", lambda: _call(addr, "GET", "/v1/status/leader") is not None)
        _call(addr, "PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-1", "Port": 80},
              source="127.0.0.2")
        _call(addr, "PUT", "/v1/kv/meshcore/ca", {"held": "state"})
        # vm2 is unknown yet: its registration lands on the default node
        _call(addr, "PUT", "/v1/agent/service/register", {"Name": "api", "ID": "api-early", "Port": 81},
              source="127.0.0.3")
        assert {n["Node"] for n in _call(addr, "GET", "/v1/catalog/service/api")} == {"cp"}

        config.write_text(json.dumps({"agents": {"vm1": "127.0.0.2", "vm2": "127.0.0.3"},
                                      "wan": {"dc2": "http://127.0.0.1:9"}}))
        os.kill(proc.pid, signal.SIGHUP)
        until("dc2 listed after the reload", lambda: _call(addr, "GET", "/v1/catalog/datacenters") == ["dc1", "dc2"])
        _call(addr, "PUT", "/v1/agent/service/register", {"Name": "api", "ID": "api-1", "Port": 81},
              source="127.0.0.3")
        assert {(n["Node"], n["ServiceID"]) for n in _call(addr, "GET", "/v1/catalog/service/api")} == {
            ("cp", "api-early"), ("vm2", "api-1")}
        assert [n["Node"] for n in _call(addr, "GET", "/v1/catalog/service/web")] == ["vm1"]
        assert json.loads(__import__("base64").b64decode(_call(addr, "GET", "/v1/kv/meshcore/ca")[0]["Value"])) == {
            "held": "state"}

        config.write_text("{not json")
        os.kill(proc.pid, signal.SIGHUP)
        until("the broken file refused", lambda: "reload refused, the configuration in use is kept" in log.read_text())
        assert proc.poll() is None
        assert _call(addr, "GET", "/v1/catalog/datacenters") == ["dc1", "dc2"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "configuration reloaded" in log.read_text()
