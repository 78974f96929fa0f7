"""The agent as a process hands its Envoy over across a restart (SIGUSR2) with no failed request.

Real parts: the agent (``python -m meshcore.agent``), the HTTPS agent API with the real CA, a small
real ADS server (grpcio, mTLS) that serves one HTTP listener, and real Envoys. A client keeps sending
requests through that listener on fresh and keep-alive connections while the agent exits with
SIGUSR2 and a new agent hot-restarts Envoy (epoch 1); the old Envoy then exits by itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from meshcore.agent.supervisor import EnvoyRecord, envoy_alive, read_record

from ._agent_api_server import AgentApiServer
from .test_daemon import AgentProcess, _free_port, _pid_alive, _status, _wait
from .test_hot_restart import Client, _answers

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _listener(port: int) -> listener_pb2.Listener:
    route = route_pb2.RouteConfiguration(name="test", virtual_hosts=[route_components_pb2.VirtualHost(
        name="all", domains=["*"], routes=[route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(status=200))])])
    route.virtual_hosts[0].routes[0].direct_response.body.inline_string = "ok"
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="test", route_config=route, http_filters=[
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))])
    return listener_pb2.Listener(
        name="test", address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
            address="127.0.0.1", port_value=port)),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm))])])


class ListenerAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Answers LDS with one listener and every other type with an empty set."""

    def __init__(self, port: int):
        self.listener = _pack(_listener(port))
        self.streams = 0

    def StreamAggregatedResources(self, request_iterator, context) -> Iterator[discovery_pb2.DiscoveryResponse]:
        self.streams += 1
        for request in request_iterator:
            if request.response_nonce:
                continue  # an ACK (or NACK) of what we sent
            resources = [self.listener] if request.type_url == LISTENER_TYPE else []
            yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=request.type_url, nonce="1",
                                                  resources=resources)

    def DeltaAggregatedResources(self, request_iterator, context) -> Iterator[discovery_pb2.DeltaDiscoveryResponse]:
        """The same over delta xDS, the agent's default."""
        for response in self.StreamAggregatedResources(request_iterator, context):
            yield discovery_pb2.DeltaDiscoveryResponse(
                system_version_info="1", type_url=response.type_url, nonce="1",
                resources=[discovery_pb2.Resource(name="test", version="1", resource=r) for r in response.resources])


@pytest.fixture
def mesh(tmp_path):
    server = AgentApiServer(tmp_path / "cp", leaf_ttl=timedelta(hours=1))
    listen = _free_port()
    ads = ListenerAds(listen)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, grpc_server)
    creds = grpc.ssl_server_credentials(
        [((server.root / "server.key").read_bytes(), (server.root / "server.crt").read_bytes())],
        root_certificates=server.ca.bundle_pem().encode(), require_client_auth=True)
    server.xds_address = f"127.0.0.1:{grpc_server.add_secure_port('127.0.0.1:0', creds)}"
    grpc_server.start()
    server.start()
    yield server, listen
    server.stop()
    grpc_server.stop(grace=None)


def _args(cp: AgentApiServer, state, admin: str, *extra: str) -> list[str]:
    return ["--node", "gw1", "--control-plane", cp.url, "--ca-file", str(cp.ca_file), "--state-dir", str(state),
            "--admin", admin, "--refresh-interval", "1s", *extra]


def _kill(pid: int | None) -> None:
    if pid is not None and _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_sigusr2_hands_envoy_over_to_the_next_agent_without_losing_a_request(mesh, tmp_path):
    cp, listen = mesh
    state = tmp_path / "state"
    token = tmp_path / "token"
    token.write_text(cp.token("gw1"))
    admin = f"127.0.0.1:{_free_port()}"
    record_path = state / "envoy" / "envoy.json"
    first = AgentProcess(_args(cp, state, admin, "--join-token-file", str(token)), tmp_path / "agent1.log")
    second: AgentProcess | None = None
    old: EnvoyRecord | None = None
    client: Client | None = None
    try:
        status = _wait(lambda: (s := _status(state)).get("envoy", {}).get("ready") and s, 60, "envoy ready", first)
        _wait(lambda: _answers(listen), 30, "the listener to answer through envoy", first)
        old_pid = status["envoy"]["pid"]
        client = Client(listen)
        time.sleep(0.5)

        first.popen.send_signal(signal.SIGUSR2)
        assert first.popen.wait(timeout=20) == 0, first.log()
        old = read_record(record_path)
        assert old is not None and old.pid == old_pid and old.epoch == 0 and old.handover, first.log()
        assert envoy_alive(old), "the handover exit must leave envoy running"
        time.sleep(1)  # the gap between two agents (systemd's RestartSec): the old envoy serves alone

        second = AgentProcess(_args(cp, state, admin), tmp_path / "agent2.log")
        status = _wait(lambda: (s := _status(state)).get("envoy", {}).get("ready") and s["envoy"]["pid"] != old_pid
                       and s["agent_pid"] == second.popen.pid and s, 60, "the new agent's envoy ready", second)
        new_pid = status["envoy"]["pid"]
        assert read_record(record_path) == EnvoyRecord(pid=new_pid, epoch=1, base_id=old.base_id)
        assert "by hot restart epoch=1" in second.log()
        _wait(lambda: not envoy_alive(old), 40, "the old envoy to drain and exit", second)
        time.sleep(1)
        client.stop()
        assert client.failures == [], client.failures[:5]
        assert client.ok > 50
        status = _status(state)
        assert status["envoy"]["pid"] == new_pid and status["envoy"]["restarts"] == 0  # supervised, not restarted
    finally:
        if client is not None:
            client.stop()
        if first.popen.poll() is None:
            first.stop()
        code = second.stop() if second is not None else None
        if old is not None:
            _kill(old.pid)
    # a normal SIGTERM still stops envoy, and leaves no record behind
    assert code == 0, second.log()
    assert not _pid_alive(new_pid)
    assert not record_path.exists()
    assert not _answers(listen)


def test_stale_record_leads_to_a_cold_start(mesh, tmp_path):
    cp, listen = mesh
    state = tmp_path / "state"
    token = tmp_path / "token"
    token.write_text(cp.token("gw1"))
    record_path = state / "envoy" / "envoy.json"
    record_path.parent.mkdir(parents=True)
    # a record from a crashed agent whose pid now belongs to another program (this test)
    record_path.write_text(json.dumps({"pid": os.getpid(), "epoch": 4, "base_id": 1234, "handover": True}))
    agent = AgentProcess(_args(cp, state, f"127.0.0.1:{_free_port()}", "--join-token-file", str(token)),
                         tmp_path / "agent.log")
    try:
        _wait(lambda: _answers(listen), 60, "the listener to answer through envoy", agent)
        status = _status(state)
        record = read_record(record_path)
        assert record is not None and record.epoch == 0 and record.pid == status["envoy"]["pid"]
        assert "record is stale" in agent.log()
    finally:
        assert agent.stop() == 0
