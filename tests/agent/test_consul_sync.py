"""``--consul-services-dir``: the agent keeps the local Consul agent's registrations equal to the
definition files (Consul test double, or the real Consul named by CONSUL_HTTP_ADDR)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from meshcore.agent._consul import ConsulSync, consul_syncer, load_payloads

ROOT = Path(__file__).resolve().parents[2]


def _write_service(directory: Path, name: str, port: int) -> None:
    (directory / f"{name}.json").write_text(json.dumps({"service": {
        "name": name, "id": f"{name}-1", "port": port,
        "connect": {"sidecar_service": {"port": port + 1000}},
        "check": {"id": f"{name}-http", "name": "http", "http": f"http://127.0.0.1:{port}/health", "interval": "5s"},
    }}))


def _agent_services(consul_http) -> dict:
    headers = {"X-Consul-Token": consul_http.token} if consul_http.token else {}
    return requests.get(consul_http.address + "/v1/agent/services", headers=headers, timeout=5).json()


def test_payloads_from_a_services_only_directory(tmp_path):
    _write_service(tmp_path, "web", 18080)
    (payload,) = load_payloads(tmp_path, "vm1")
    assert payload["Name"] == "web" and payload["ID"] == "web-1" and payload["Port"] == 18080
    assert payload["Connect"]["SidecarService"]["Port"] == 19080
    assert payload["Checks"][0]["HTTP"] == "http://127.0.0.1:18080/health"


def test_sync_registers_updates_and_removes(consul_http, tmp_path):
    web, api = consul_http.unique("web"), consul_http.unique("api")
    _write_service(tmp_path, web, 18080)
    _write_service(tmp_path, api, 18081)
    sync = ConsulSync(tmp_path, "vm1", syncer_factory=lambda: consul_syncer(consul_http.env()))
    assert sync.sync_now(), sync.last_error
    services = _agent_services(consul_http)
    assert {f"{web}-1", f"{api}-1"} <= set(services)
    assert sync.status()["registered"] == sorted([f"{api}-1", f"{web}-1"])

    (tmp_path / f"{api}.json").unlink()
    assert sync.sync_now()
    services = _agent_services(consul_http)
    assert f"{web}-1" in services and f"{api}-1" not in services

    (tmp_path / "broken.json").write_text("{")
    assert not sync.sync_now()
    assert "broken.json" in sync.last_error
    assert f"{web}-1" in _agent_services(consul_http)  # a bad file changes nothing


def test_agent_registers_services_even_before_joining(consul_http, tmp_path, ca):
    """Consul registration does not wait for the control plane (here: nothing listens at all)."""
    web = consul_http.unique("web")
    services_dir = tmp_path / "consul.d"
    services_dir.mkdir()
    _write_service(services_dir, web, 18090)
    (tmp_path / "bundle.pem").write_text(ca.bundle_pem())
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **consul_http.env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore.agent", "--node", "vm1", "--control-plane", "https://127.0.0.1:9",
         "--ca-file", str(tmp_path / "bundle.pem"), "--state-dir", str(state), "--join-token", "t",
         "--consul-services-dir", str(services_dir), "--refresh-interval", "0.5s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while f"{web}-1" not in _agent_services(consul_http):
            assert time.monotonic() < deadline, "the agent did not register the service in Consul"
            assert proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
