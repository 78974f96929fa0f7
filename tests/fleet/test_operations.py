"""The fleet commands' remote scripts, run for real in a local shell (the hosts' side), and their reports.

A LocalSession runs each command with ``sh -c`` here, exactly what Fabric runs on a host; the agent's
state directory is a temporary one and Envoy's admin ``/ready`` is a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.fleet import Host, RemoteError, bug_report, fleet_status, for_each_host, scan_archive

from .conftest import LocalSession


class Admin(BaseHTTPRequestHandler):
    ready = b"LIVE"

    def do_GET(self):  # noqa: N802 - http.server's name
        body = self.ready if self.path == "/ready" else json.dumps(
            {"configs": [{"secret": {"private_key": {"inline_string": "[redacted]"}}}]}).encode()
        self.send_response(200 if body == b"LIVE" or self.path != "/ready" else 503)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def admin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def agent_dir(tmp_path, admin, cert_factory):
    state = tmp_path / "agent"
    state.mkdir()
    _, node_pem, node_key = cert_factory("vm1", "spiffe://cluster.local/ns/default/node/vm1")
    _, root_pem, _ = cert_factory("root", ca=True, days=3650)
    (state / "node.crt").write_text(node_pem)
    (state / "node.key").write_text(node_key)
    (state / "bundle.pem").write_text(root_pem)
    (state / "join-token").write_text("jt-0123456789abcdef\n")
    (state / "status.json").write_text(json.dumps({
        "node": "vm1", "state": "running",
        "node_certificate": {"spiffe_id": "spiffe://cluster.local/ns/default/node/vm1", "serial": "1",
                             "not_after": "2030-01-01T00:00:00Z"},
        "services": [{"name": "details", "spiffe_id": "spiffe://cluster.local/ns/default/sa/details",
                      "serial": "2", "not_after": "2029-06-01T00:00:00Z"}],
        "envoy": {"pid": os.getpid(), "admin": admin, "ready": True}}))
    return state


def host(name, state_dir, **variables) -> Host:
    return Host(name=name, address="127.0.0.1", user="root", groups=("meshcore_vms",),
                variables={"meshcore_agent_state_dir": str(state_dir), **variables})


def test_status_probe_reads_status_json_and_envoy_ready(agent_dir, admin):
    reports = fleet_status([host("vm1", agent_dir, meshcore_agent_admin=admin)], factory=LocalSession)
    (r,) = reports
    assert r.error is None, r
    assert r.envoy["pid"] == os.getpid() and r.envoy["ready"] is True and r.envoy["admin"] == admin
    assert r.agent_state == "running"
    assert r.not_after == "2029-06-01T00:00:00Z"
    # no systemd as PID 1 here: the units' state is whatever systemctl can tell, never invented
    assert set(r.units) >= {"agent", "control-plane"}


def test_one_unreachable_host_does_not_stop_the_others(agent_dir, admin):
    def factory(h: Host):
        if h.name == "down":
            raise RemoteError("down (root@127.0.0.1:22): NoValidConnectionsError: connection refused")
        return LocalSession(h)
    lines: list[str] = []
    results = for_each_host([host("vm1", agent_dir), host("down", agent_dir)], lambda s: s.run("echo hi").stdout,
                            what="test", factory=factory, report=lines.append)
    assert results["vm1"] == "hi\n"
    assert isinstance(results["down"], RemoteError)
    assert any("down FAILED" in line for line in lines) and any("vm1 done" in line for line in lines)
    reports = fleet_status([host("vm1", agent_dir, meshcore_agent_admin=admin), host("down", agent_dir)],
                           factory=factory)
    assert reports[0].error is None and "connection refused" in reports[1].error and not reports[1].healthy


def test_bug_report_has_metadata_and_no_private_keys_or_tokens(tmp_path, agent_dir, admin):
    out = tmp_path / "report.tar.gz"
    manifest = bug_report([host("vm1", agent_dir, meshcore_agent_admin=admin,
                                meshcore_agent_ca_file=str(agent_dir / "bundle.pem"))], out,
                          factory=LocalSession)
    assert manifest["failed"] == []
    assert scan_archive(out) == []
    assert scan_archive(out, ("jt-0123456789abcdef",)) == []
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        assert {"manifest.json", "hosts/vm1/fleet-status.json", "hosts/vm1/certificates.json",
                "hosts/vm1/agent-status.json", "hosts/vm1/envoy-config_dump.json"} <= set(names)
        certs = json.load(tar.extractfile(names["hosts/vm1/certificates.json"]))
    by_path = {os.path.basename(p): v for p, v in certs.items()}
    assert by_path["node.crt"][0]["uri_sans"] == ["spiffe://cluster.local/ns/default/node/vm1"]
    assert by_path["bundle.pem"][0]["is_ca"] is True
    assert "node.key" not in by_path


def test_scan_archive_finds_a_private_key(tmp_path, cert_factory):
    _, _, key = cert_factory("x")
    src = tmp_path / "k.txt"
    src.write_text(key)
    out = tmp_path / "a.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname="top/k.txt")
    assert scan_archive(out) == ["top/k.txt"]


def test_bug_report_redacts_tokens_and_kek_in_every_collected_text_and_the_manifest(tmp_path, agent_dir, admin):
    join, operator, kek = "mjt_UnusedJoinToken0123456789", "mco_OperatorToken0123456789abc", "S2VLc2VjcmV0a2VrdmFsdWU="
    status = json.loads((agent_dir / "status.json").read_text())
    status["command_line"] = f"/usr/local/bin/meshcore-agent --node vm1 --join-token {join}"
    status["processes"] = f"root 77 meshctl --token {operator} get proxies\n"
    status["log"] = f"refused {operator}; Environment=MESHCORE_KEK={kek}"
    (agent_dir / "status.json").write_text(json.dumps(status))
    out = tmp_path / "report.tar.gz"

    def factory(h):
        if h.name == "vm2":
            raise RemoteError(f"vm2: ssh failed running meshctl --token {operator}")
        return LocalSession(h)

    manifest = bug_report([host("vm1", agent_dir, meshcore_agent_admin=admin), host("vm2", agent_dir)], out,
                          factory=factory)
    assert manifest["failed"] == ["vm2"]
    assert scan_archive(out, (join, operator, kek, join[4:], operator[4:])) == []
