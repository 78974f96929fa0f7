"""ConsulRegistrar against the Consul double (or a real Consul when CONSUL_HTTP_ADDR is set)."""

from __future__ import annotations

import pytest
import requests

from meshcore.agent.consul_registration import MANAGED_BY, ConsulRegistrar
from meshcore.catalog.consul import ConsulSettings
from meshcore.errors import ConfigError, ConsulAuthError


def _web(endpoint, version: str = "v1", port: int = 8080) -> dict:
    name = endpoint.unique("web")
    return {
        "Name": name, "ID": f"{name}-1", "Port": port, "Tags": ["mesh"], "Meta": {"version": version},
        "Connect": {"SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}}},
        "Checks": [{"CheckID": f"{name}-ttl", "Name": "app alive", "TTL": "60s", "Status": "passing"}],
    }


def _agent_services(endpoint) -> dict:
    return requests.get(endpoint.address + "/v1/agent/services", headers=endpoint._headers(), timeout=10).json()


def _modify_index(endpoint, name: str, sid: str) -> int:
    entries = requests.get(f"{endpoint.address}/v1/catalog/service/{name}", headers=endpoint._headers(), timeout=10).json()
    return next(e["ModifyIndex"] for e in entries if e["ServiceID"] == sid)


@pytest.fixture
def registrar(consul_http):
    r = ConsulRegistrar(ConsulSettings.from_env(consul_http.env()))
    yield r
    r.close()


def test_register_creates_service_sidecar_and_checks(consul_http, registrar):
    web = _web(consul_http)
    assert registrar.register(web) == web["ID"]
    services = _agent_services(consul_http)
    svc, sidecar = services[web["ID"]], services[web["ID"] + "-sidecar-proxy"]
    assert svc["Meta"]["managed-by"] == MANAGED_BY and svc["Meta"]["version"] == "v1"
    assert sidecar["Proxy"]["Upstreams"][0]["DestinationName"] == "db"
    checks = requests.get(consul_http.address + "/v1/agent/checks", headers=consul_http._headers(), timeout=10).json()
    assert checks[f"{web['Name']}-ttl"]["Status"] == "passing"
    assert set(registrar.registered()) == {web["ID"]}, "sidecars belong to their parent registration"


def test_sync_registers_keeps_updates_and_removes(consul_http, registrar):
    web = _web(consul_http)
    api = {"Name": consul_http.unique("api"), "Port": 9000}
    first = registrar.sync([web, api])
    assert sorted(first.registered) == sorted([web["ID"], api["Name"]])

    before = _modify_index(consul_http, web["Name"], web["ID"])
    again = registrar.sync([web, api])
    assert again.registered == [] and sorted(again.unchanged) == sorted([web["ID"], api["Name"]])
    assert _modify_index(consul_http, web["Name"], web["ID"]) == before, "an unchanged service must not be re-registered"

    changed = _web(consul_http, version="v2")
    third = registrar.sync([changed])
    assert third.registered == [web["ID"]] and third.deregistered == [api["Name"]]
    services = _agent_services(consul_http)
    assert services[web["ID"]]["Meta"]["version"] == "v2"
    assert api["Name"] not in services

    last = registrar.sync([])
    assert last.deregistered == [web["ID"]]
    services = _agent_services(consul_http)
    assert web["ID"] not in services and web["ID"] + "-sidecar-proxy" not in services


def test_sync_leaves_services_it_does_not_own(consul_http, registrar):
    operator_service = {"Name": consul_http.unique("operator"), "Port": 7000}
    consul_http.put("/v1/agent/service/register", operator_service)
    registrar.sync([_web(consul_http)])
    result = registrar.sync([])
    assert operator_service["Name"] not in result.deregistered
    assert operator_service["Name"] in _agent_services(consul_http)


def test_deregister_unknown_service_is_false(consul_http, registrar):
    assert registrar.deregister(consul_http.unique("ghost")) is False


def test_bad_payloads_are_config_errors(consul_http, registrar):
    with pytest.raises(ConfigError, match="Name"):
        registrar.register({"Port": 80})
    web = _web(consul_http)
    with pytest.raises(ConfigError, match="unique ID"):
        registrar.sync([web, dict(web)])


def test_registration_needs_a_token_with_write_rights(consul_acl):
    reader = ConsulRegistrar(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                                      "CONSUL_HTTP_TOKEN": consul_acl.read_token}))
    with pytest.raises(ConsulAuthError, match="CONSUL_HTTP_TOKEN"):
        reader.register({"Name": "web", "Port": 80})
    writer = ConsulRegistrar(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                                      "CONSUL_HTTP_TOKEN": consul_acl.token}))
    assert writer.sync([{"Name": "web", "Port": 80}]).registered == ["web"]
    assert set(reader.registered()) == {"web"}


# --- the agent's own service: where Prometheus scrapes this VM --------------------------------------

def test_agent_service_payload_wildcard_and_specific_binds():
    from meshcore.agent.consul_registration import AGENT_SERVICE, agent_service_payload

    wild = agent_service_payload("vm1", "0.0.0.0", 15090)
    assert (wild["Name"], wild["ID"], wild["Port"]) == (AGENT_SERVICE, "meshcore-agent-vm1", 15090)
    assert "Address" not in wild  # Consul and Prometheus use the node's address
    assert wild["Meta"] == {"meshcore-node": "vm1", "meshcore-metrics-port": "15090", "meshcore-metrics-path": "/metrics"}
    assert wild["Checks"][0]["HTTP"] == "http://127.0.0.1:15090/healthz"
    specific = agent_service_payload("vm2", "10.0.0.7", 9100)
    assert specific["Address"] == "10.0.0.7" and specific["Checks"][0]["HTTP"] == "http://10.0.0.7:9100/healthz"
    v6 = agent_service_payload("vm3", "::", 15090)
    assert "Address" not in v6 and v6["Checks"][0]["HTTP"] == "http://[::1]:15090/healthz"


def test_agent_service_is_registered_with_the_metrics_port(consul_http, registrar):
    from meshcore.agent.consul_registration import AGENT_SERVICE, agent_service_payload

    node = consul_http.unique("vm")
    web = _web(consul_http)
    registrar.sync([web, agent_service_payload(node, "127.0.0.1", 19123)])
    entries = requests.get(f"{consul_http.address}/v1/catalog/service/{AGENT_SERVICE}", headers=consul_http._headers(),
                           timeout=10).json()
    [entry] = [e for e in entries if e["ServiceID"] == f"{AGENT_SERVICE}-{node}"]
    assert entry["ServicePort"] == 19123 and entry["ServiceAddress"] == "127.0.0.1"
    assert entry["ServiceMeta"]["meshcore-metrics-path"] == "/metrics"
    assert entry["ServiceMeta"]["meshcore-metrics-port"] == "19123"
    assert entry["ServiceMeta"]["meshcore-node"] == node
    assert set(registrar.registered()) == {web["ID"], f"{AGENT_SERVICE}-{node}"}  # owned like the VM's services
    registrar.sync([web])  # metrics turned off: the registration goes
    assert f"{AGENT_SERVICE}-{node}" not in _agent_services(consul_http)


def test_running_agent_registers_its_bound_metrics_endpoint(consul_http, tmp_path):
    """The daemon wiring: an agent with --metrics-bind on a free port and --consul-services-dir registers
    meshcore-agent-<node> on exactly that port (no control plane needed: nothing listens there)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from meshcore.ca import CertificateAuthority, generate_kek_file

    root = Path(__file__).resolve().parents[2]
    ca = CertificateAuthority.open(tmp_path / "ca", kek=generate_kek_file(tmp_path / "ca.kek"))
    (tmp_path / "bundle.pem").write_text(ca.bundle_pem())
    services_dir = tmp_path / "consul.d"
    services_dir.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = consul_http.unique("vm")
    env = {**os.environ, "PYTHONPATH": str(root), **consul_http.env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore.agent", "--node", node, "--control-plane", "https://127.0.0.1:9",
         "--ca-file", str(tmp_path / "bundle.pem"), "--state-dir", str(tmp_path / "state"), "--join-token", "t",
         "--consul-services-dir", str(services_dir), "--refresh-interval", "0.5s",
         "--metrics-bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=root)
    sid = f"meshcore-agent-{node}"
    try:
        deadline = time.monotonic() + 30
        while sid not in _agent_services(consul_http):
            assert time.monotonic() < deadline, "the agent did not register its metrics endpoint in Consul"
            assert proc.poll() is None
            time.sleep(0.1)
        svc = _agent_services(consul_http)[sid]
        assert (svc["Service"], svc["Port"], svc["Address"]) == ("meshcore-agent", port, "127.0.0.1")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the registered port is the one serving
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
