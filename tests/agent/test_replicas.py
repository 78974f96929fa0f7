"""Control plane replicas on the agent side: the per-node choice, failover with bounded jittered backoff,
discovery in Consul (the double's health endpoint, blocking queries) and the configuration that names them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import requests

from meshcore import naming
from meshcore.agent._xds_endpoints import XdsEndpointsFile
from meshcore.agent.client import AgentRequestError, FailoverClient
from meshcore.agent.config import load_config
from meshcore.agent.replicas import (
    AGENT_API_PORT_KEY,
    API_ADDRESS_KEY,
    MAX_DOWN,
    XDS_ADDRESS_KEY,
    XDS_PORT_KEY,
    Replica,
    ReplicaSet,
    consul_lookup,
    rendezvous_order,
)
from meshcore.demo.launcher import wait_until
from meshcore.errors import ConfigError, ControlPlaneUnavailable

from tests.consul_double import ConsulDouble

A, B, C = "https://10.0.0.1:15443", "https://10.0.0.2:15443", "https://10.0.0.3:15443"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """The agent API of one replica as the failover client sees it: answers, or fails as told."""

    def __init__(self, url: str, fail: dict[str, Exception], calls: list[str]):
        self.url = url
        self._fail = fail
        self._calls = calls
        self.bundle_sha256 = ""

    def bundle(self):
        self._calls.append(self.url)
        if self.url in self._fail:
            raise self._fail[self.url]
        return f"bundle from {self.url}"

    def close(self) -> None:
        pass


def _failover(urls=(A, B, C), node="vm1"):
    clock, fail, calls = Clock(), {}, []
    replicas = ReplicaSet(node=node, urls=tuple(urls), clock=clock)
    client = FailoverClient(replicas, Path("/dev/null"),
                            client_factory=lambda url, ca_file, **kw: FakeApi(url, fail, calls))
    return replicas, client, clock, fail, calls


def test_rendezvous_choice_is_stable_spread_and_moves_only_the_nodes_of_a_removed_replica():
    replicas = [Replica(url) for url in (A, B, C)]
    nodes = [f"vm{i}" for i in range(900)]
    first = {n: rendezvous_order(n, replicas)[0].url for n in nodes}
    assert first == {n: rendezvous_order(n, list(reversed(replicas)))[0].url for n in nodes}  # input order moot
    spread = Counter(first.values())
    assert set(spread) == {A, B, C} and min(spread.values()) > 900 / 3 * 0.8, spread
    without_c = {n: rendezvous_order(n, replicas[:2])[0].url for n in nodes}
    moved = [n for n in nodes if without_c[n] != first[n]]
    assert moved and all(first[n] == C for n in moved)  # only C's nodes moved


def test_a_failed_replica_is_skipped_the_call_moves_on_at_once_and_the_preferred_one_is_tried_again_later():
    replicas, client, clock, fail, calls = _failover()
    preferred, second = [r.url for r in replicas.order()][:2]
    assert client.bundle() == f"bundle from {preferred}"
    assert replicas.current == preferred
    fail[preferred] = ControlPlaneUnavailable("connection refused")
    client.close()
    calls.clear()
    assert client.bundle() == f"bundle from {second}"  # one call: the failover happened inside it
    assert calls == [preferred, second]
    assert replicas.current == second
    status = {r["url"]: r for r in replicas.status()}
    assert status[preferred]["up"] is False and status[preferred]["failures"] == 1
    assert "connection refused" in status[preferred]["last_error"]
    assert status[second]["current"] is True
    calls.clear()
    assert client.bundle() == f"bundle from {second}" and calls == [second]  # the down one is not tried
    del fail[preferred]
    clock.now += MAX_DOWN + 2  # its down mark expired: the agent goes back to its own replica
    client.close()
    calls.clear()
    assert client.bundle() == f"bundle from {preferred}" and calls == [preferred]
    assert replicas.current == preferred


def test_a_retryable_answer_fails_over_a_refusal_does_not_and_all_down_names_every_error():
    replicas, client, _clock, fail, calls = _failover()
    order = [r.url for r in replicas.order()]
    fail[order[0]] = AgentRequestError("GET", "/v1/agent/bundle", 503, "shutting down")
    assert client.bundle() == f"bundle from {order[1]}"
    fail.clear()
    client.close()
    fail[order[1]] = AgentRequestError("GET", "/v1/agent/bundle", 403, "node revoked")
    fail[order[2]] = AgentRequestError("GET", "/v1/agent/bundle", 403, "node revoked")
    calls.clear()
    with pytest.raises(AgentRequestError, match="node revoked"):
        client.bundle()
    assert len(calls) == 1  # the mesh's answer: the same on every replica, not retried elsewhere
    for url in order:
        fail[url] = ControlPlaneUnavailable(f"{url} refused")
    with pytest.raises(ControlPlaneUnavailable, match="every control plane replica failed") as raised:
        client.bundle()
    assert all(url in str(raised.value) for url in order)


def test_down_marks_grow_exponentially_with_bounded_jitter():
    replicas = ReplicaSet(node="vm1", urls=(A,), clock=Clock())
    for attempt in range(1, 12):
        delay = replicas.failed(Replica(A), "refused")
        base = min(2.0 ** (attempt - 1), MAX_DOWN)
        assert base <= delay <= min(base + 1.0, MAX_DOWN), (attempt, delay)
    samples = {round(ReplicaSet(node="vm1", urls=(A,), clock=Clock()).failed(Replica(A), "x"), 6) for _ in range(20)}
    assert len(samples) > 1  # jittered: agents that failed together do not retry together


def test_xds_addresses_cover_every_replica_with_the_port_one_of_them_gave():
    replicas, client, *_ = _failover(urls=(A, B))
    assert replicas.xds_addresses() == []  # nothing known yet
    replicas.learned_xds(Replica(A), "10.0.0.1:15012")
    assert sorted(replicas.xds_addresses()) == ["10.0.0.1:15012", "10.0.0.2:15012"]


@pytest.fixture
def consul():
    with ConsulDouble(node="consul1") as double:
        yield double


def _register(consul, sid: str, address: str, api: int, xds: int) -> None:
    body = {"Name": "meshcore-control-plane", "ID": sid, "Address": address, "Port": api,
            "Meta": {AGENT_API_PORT_KEY: str(api), XDS_PORT_KEY: str(xds)},
            "Check": {"CheckID": f"{sid}-ttl", "TTL": "30s", "Status": "passing"}}
    requests.put(f"{consul.address}/v1/agent/service/register", json=body, timeout=5).raise_for_status()


def test_replicas_come_from_the_passing_instances_in_consul_and_follow_it(consul):
    _register(consul, "cp-a", "10.0.0.1", 15443, 15012)
    _register(consul, "cp-b", "10.0.0.2", 15443, 15012)
    env = {"CONSUL_HTTP_ADDR": consul.address}
    lookup = consul_lookup(env)
    found, index = lookup("meshcore-control-plane", "")
    assert {(r.url, r.xds_address) for r in found} == {(A, "10.0.0.1:15012"), (B, "10.0.0.2:15012")}
    assert index.isdigit()
    replicas = ReplicaSet(node="vm1", consul_service="meshcore-control-plane", lookup_factory=lambda: lookup)
    try:
        assert {r.url for r in replicas.order()} == {A, B}
        consul.set_check_status("cp-a-ttl", "critical")  # the watcher's blocking query returns
        wait_until(lambda: {r.url for r in replicas.order()} == {B}, 20, "replica A to leave the list")
        assert replicas.xds_addresses() == ["10.0.0.2:15012"]
        assert {r["source"] for r in replicas.status()} == {"consul"}
        consul.set_check_status("cp-b-ttl", "critical")  # none passing: more likely Consul's trouble
        wait_until(lambda: not replicas.consul_replicas, 20, "consul to list no passing replica")
        assert [r.url for r in replicas.order()] == [B]  # the last ones listed are still tried
        consul.set_check_status("cp-a-ttl", "passing")
        wait_until(lambda: {r.url for r in replicas.order()} == {A}, 20, "replica A to come back")
    finally:
        replicas.stop()


def test_no_passing_replica_is_a_retryable_error_that_says_where_it_looked(consul):
    replicas = ReplicaSet(node="vm1", consul_service="meshcore-control-plane",
                          lookup_factory=lambda: consul_lookup({"CONSUL_HTTP_ADDR": consul.address}))
    client = FailoverClient(replicas, Path("/dev/null"))
    try:
        with pytest.raises(ControlPlaneUnavailable, match="meshcore-control-plane' has no passing instance"):
            client.bundle()
    finally:
        replicas.stop()


def test_configuration_names_several_replicas_or_consul(tmp_path):
    ca = tmp_path / "ca.pem"
    from tests.agent._agent_api_server import AgentApiServer  # a real bundle for --ca-file

    server = AgentApiServer(tmp_path / "cp")
    ca.write_text(server.ca.bundle_pem())
    base = ["--node", "vm1", "--ca-file", str(ca), "--envoy-path", "/bin/true"]
    config = load_config([*base, "--control-plane", f"{A}, {B}/,{A}"], env={})
    assert config.control_plane_urls == (A, B) and config.control_plane == A
    config = load_config([*base, "--control-plane-from-consul"], env={})
    assert config.control_plane_service == "meshcore-control-plane" and config.control_plane_urls == ()
    config = load_config([*base], env={"MESHCORE_AGENT_CONTROL_PLANE_FROM_CONSUL": "cp-east"})
    assert config.control_plane_service == "cp-east"
    yaml_file = tmp_path / "agent.yaml"
    yaml_file.write_text(json.dumps({"control_plane": [A, B, C], "control_plane_from_consul": True}))
    config = load_config([*base, "--config", str(yaml_file)], env={})
    assert config.control_plane_urls == (A, B, C) and config.control_plane_service == "meshcore-control-plane"
    with pytest.raises(ConfigError, match="control_plane: required"):
        load_config(base, env={})
    with pytest.raises(ConfigError, match="'http://b:1' must be an https"):
        load_config([*base, "--control-plane", f"{A},http://b:1"], env={})


def test_xds_endpoints_file_lists_every_replica_and_resolves_names(tmp_path):
    names = {"cp.example": ["10.0.0.9"], "gone.example": []}
    endpoints = XdsEndpointsFile(tmp_path / "xds" / "endpoints.json", resolver=lambda host: names[host])
    assert endpoints.update(["10.0.0.1:15012", "cp.example:15012", "gone.example:15012"])
    doc = json.loads(endpoints.path.read_text())
    lb = doc["resources"][0]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in lb] == [
        {"address": "10.0.0.1", "port_value": 15012}, {"address": "10.0.0.9", "port_value": 15012}]
    assert doc["resources"][0]["cluster_name"] == naming.XDS_CLUSTER
    assert not endpoints.update(["cp.example:15012", "10.0.0.1:15012"])  # same endpoints: file untouched
    assert not endpoints.update(["gone.example:15012"])  # nothing resolves: Envoy keeps what it has
    assert endpoints.addresses == (("10.0.0.1", 15012), ("10.0.0.9", 15012))


def test_a_reload_replaces_the_configured_replicas():
    replicas = ReplicaSet(node="vm1", urls=(A, B), clock=Clock())
    replicas.failed(Replica(A), "refused")
    replicas.reconfigure((B, C), "")
    assert {r.url for r in replicas.order()} == {B, C}
    assert replicas.status()[0]["failures"] == 0 and all(r["url"] != A for r in replicas.status())


def test_consul_instances_without_an_agent_api_port_are_skipped_and_the_node_address_is_the_fallback():
    from meshcore.agent.replicas import replicas_from_health

    entries = [{"Node": {"Address": "10.0.0.7"}, "Service": {"ID": "cp-x", "Meta": {AGENT_API_PORT_KEY: "15443"}}},
               {"Node": {"Address": "10.0.0.8"}, "Service": {"ID": "cp-y", "Meta": {}}},
               {"Node": {"Address": "10.0.0.9"}, "Service": {"ID": "cp-z", "Address": "fd00::9",
                                                             "Meta": {AGENT_API_PORT_KEY: "1", XDS_PORT_KEY: "2"}}}]
    entries.append({"Node": {"Address": "10.0.0.10"}, "Service": {"ID": "cp-w", "Address": "10.0.0.10", "Port": 15000,
                    "Meta": {API_ADDRESS_KEY: "https://cp-w.example:15443/", XDS_ADDRESS_KEY: "cp-w.example:15012",
                             AGENT_API_PORT_KEY: "15443", XDS_PORT_KEY: "15012"}}})  # as replicas register
    found = replicas_from_health(entries, "meshcore-control-plane")
    assert [(r.url, r.xds_address) for r in found] == [("https://10.0.0.7:15443", ""),
                                                       ("https://[fd00::9]:1", "[fd00::9]:2"),
                                                       ("https://cp-w.example:15443", "cp-w.example:15012")]


def test_the_bootstrap_with_the_endpoints_file_does_not_depend_on_the_replica_that_answered(tmp_path):
    from meshcore.agent.bootstrap import render_bootstrap

    def render(xds: str) -> dict:
        return render_bootstrap(node="vm1", trust_domain="cluster.local", xds_address=xds, secrets_dir=tmp_path,
                                admin_address="127.0.0.1:19000", xds_endpoints_file=tmp_path / "xds" / "endpoints.json")

    first = render("cp1.example:15012")
    assert first == render("cp2.example:15012") == render("10.0.0.6:15012")  # no restart on a failover
    cluster = first["static_resources"]["clusters"][0]
    assert cluster["type"] == "EDS" and "load_assignment" not in cluster
    assert cluster["eds_cluster_config"]["eds_config"]["path_config_source"]["path"].endswith("xds/endpoints.json")


def test_a_replica_that_never_answers_the_handshake_fails_after_the_connect_timeout(ca, tmp_path, monkeypatch):
    import socket
    import time

    from meshcore.agent import client as client_module
    from meshcore.agent.client import AgentClient

    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 0.5)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca.bundle_pem())
    silent = socket.socket()  # TCP connects land in its backlog; nobody ever answers the TLS handshake
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        client = AgentClient(f"https://127.0.0.1:{silent.getsockname()[1]}", bundle, timeout=60)
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnavailable, match="timed out"):
            client.join("vm1", "token", "csr")
        assert time.monotonic() - started < 30  # not the request's 60 s: the failover can happen
    finally:
        silent.close()
