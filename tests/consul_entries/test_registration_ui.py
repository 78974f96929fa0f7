"""What the Consul UI shows of a meshcore sidecar: the address and port Envoy listens on, checks that follow
it, upstreams for the topology view, meshcore's version in meta (the double dials TCP checks here)."""

from __future__ import annotations

import socket
import time

import requests

from meshcore import __version__
from meshcore.agent.consul_registration import CONFIG_VERSION_KEY, VERSION_KEY, ConsulRegistrar, sidecar_fidelity
from meshcore.catalog.consul import ConsulSettings
from tests.consul_double import ConsulDouble


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(port: int) -> dict:
    return {"Name": "web", "ID": "web-1", "Port": 8080, "Meta": {"version": "v1"},
            "Connect": {"SidecarService": {"Port": port, "Proxy": {
                "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
                "Upstreams": [{"DestinationName": "api", "LocalBindPort": 9191}]}}}}


def _wait(fn, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_sidecar_fidelity_is_pure_and_keeps_explicit_checks():
    p = _payload(21000)
    out = sidecar_fidelity(p, "10.0.0.5", version="1.2.3", config_version="abc")
    sc = out["Connect"]["SidecarService"]
    assert sc["Address"] == "10.0.0.5" and sc["Checks"][0]["TCP"] == "10.0.0.5:21000"
    assert sc["Checks"][1]["AliasService"] == "web-1"
    assert sc["Meta"] == {"version": "v1", VERSION_KEY: "1.2.3", CONFIG_VERSION_KEY: "abc"}
    assert sc["Proxy"]["Upstreams"][0]["DestinationType"] == "service"
    assert "Address" not in p["Connect"]["SidecarService"]  # the input is not changed
    own = _payload(21000)
    own["Connect"]["SidecarService"]["Checks"] = [{"Name": "mine", "TTL": "30s"}]
    assert sidecar_fidelity(own, "10.0.0.5")["Connect"]["SidecarService"]["Checks"] == [{"Name": "mine", "TTL": "30s"}]
    assert sidecar_fidelity({"Name": "plain"}, "10.0.0.5") == {"Name": "plain"}


def test_sidecar_check_passes_while_envoy_listens_and_fails_when_it_stops():
    port = _free_port()
    with ConsulDouble(node="vm1", node_address="127.0.0.1", run_tcp_checks=True) as double:
        registrar = ConsulRegistrar(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": double.address}),
                                    config_version=lambda sid: "v-123", check_interval="300ms")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        try:
            registrar.sync([_payload(port)])
            services = requests.get(double.address + "/v1/agent/services", timeout=10).json()
            sidecar = services["web-1-sidecar-proxy"]
            assert (sidecar["Address"], sidecar["Port"]) == ("127.0.0.1", port)
            assert sidecar["Meta"][VERSION_KEY] == __version__ and sidecar["Meta"][CONFIG_VERSION_KEY] == "v-123"
            assert sidecar["Proxy"]["Upstreams"][0]["DestinationName"] == "api"

            def sidecar_check():
                checks = requests.get(double.address + "/v1/health/service/web-sidecar-proxy", timeout=10).json()
                return {c["Name"]: c["Status"] for c in checks[0]["Checks"]} if checks else {}

            assert _wait(lambda: sidecar_check().get("Envoy mesh listener") == "passing")
        finally:
            listener.close()
        assert _wait(lambda: sidecar_check().get("Envoy mesh listener") == "critical")
        registrar.close()
