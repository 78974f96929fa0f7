"""A control plane restarted under connected proxies (same ports, same state directory): it stops without
waiting on its watch threads, and the proxies' delta streams come back in sync on the new process, also those
that reconnect holding every current version (the server owes them no response)."""

from __future__ import annotations

import time

import grpc
from google.protobuf import struct_pb2

from envoy.config.core.v3 import base_pb2

from meshcore import naming
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.controlplane.engine import POLL_WAIT_S
from meshcore.xds._typeurls import CLUSTER, LISTENER

from ..e2e._topology import free_port, write_catalog
from ..xds._ads import DeltaClient

NODE = "n1"
WAIT = 30.0  # generous: the machine is shared


class AgentDeltaClient(DeltaClient):
    """A delta stream whose node carries what an agent's bootstrap puts there."""

    def _node(self, node_id: str | None) -> base_pb2.Node:
        md = struct_pb2.Struct()
        md.update({"secrets_dir": "/var/lib/meshcore/secrets", "admin": "", "metrics": ""})
        return base_pb2.Node(id=node_id or self.node_id, cluster=self.node_id, metadata=md)


def _settings(base, ports: dict[str, int]) -> Settings:
    return Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                    xds_bind=f"127.0.0.1:{ports['xds']}", api_bind=f"127.0.0.1:{ports['api']}",
                    http_bind=f"127.0.0.1:{ports['http']}")


def _start(base, ports: dict[str, int], kek: bytes) -> ControlPlane:
    plane = ControlPlane(_settings(base, ports), kek)
    plane.start()
    assert plane.engine.ready.wait(WAIT)
    return plane


def _channel(plane: ControlPlane, key_pem: str, chain_pem: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(plane.ca.bundle_pem().encode(), key_pem.encode(), chain_pem.encode())
    return grpc.secure_channel(plane.addresses["xds"], creds)


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _subscribe(client: AgentDeltaClient, initial: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Subscribe CDS and LDS (wildcard) and ACK what comes; returns {type: {name: version}} received."""
    got: dict[str, dict[str, str]] = {}
    for type_url in (CLUSTER, LISTENER):
        client.send(type_url, initial=(initial or {}).get(type_url))
    if initial:
        return got
    while len(got) < 2:
        resp = client.recv(WAIT)
        got[resp.type_url] = {r.name: r.version for r in resp.resources}
        client.ack(resp)
    return got


def test_restart_with_streams_connected_they_come_back(tmp_path):
    write_catalog(tmp_path / "catalog")
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    kek = generate_kek_file(tmp_path / "kek")
    plane = _start(tmp_path, ports, kek)
    key = new_private_key()
    issued = plane.ca.sign_csr(make_csr(key, naming.node_spiffe_id(plane.ca.trust_domain, NODE)),
                               spiffe_id=naming.node_spiffe_id(plane.ca.trust_domain, NODE), node=NODE)
    key_pem, chain_pem = key_to_pem(key), issued.chain_pem
    clients: list[AgentDeltaClient] = []
    channels: list[grpc.Channel] = []
    second = None
    try:
        channels.append(_channel(plane, key_pem, chain_pem))
        clients.append(AgentDeltaClient(channels[-1], NODE))
        held = _subscribe(clients[-1])
        assert held[CLUSTER] and held[LISTENER]
        _wait(lambda: plane.cache.status(NODE)["synced"], "the first stream to sync")

        watchers = [t for t in plane.engine._threads if t.name in ("catalog-watch", "resource-watch")]
        plane.stop()
        # The catalog watch was woken (its source closed), not left blocked in its 30 s wait (POLL_WAIT_S).
        _wait(lambda: not any(t.name == "catalog-watch" and t.is_alive() for t in watchers),
              "the catalog watch thread to end", timeout=POLL_WAIT_S / 3)
        try:
            clients[-1].recv(WAIT)
            raise AssertionError("the stream outlived its control plane")
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc

        second = _start(tmp_path, ports, kek)  # same ports, same state (CA, tokens)
        # A reconnect holding every current version: nothing differs, so nothing is sent, yet it is in sync.
        channels.append(_channel(second, key_pem, chain_pem))
        clients.append(AgentDeltaClient(channels[-1], NODE))
        _subscribe(clients[-1], initial=held)
        _wait(lambda: second.cache.status(NODE)["connected_streams"] == 1 and second.cache.status(NODE)["synced"],
              "the reconnected stream to count as synced")
        clients[-1].expect_nothing(0.5)
        # A fresh stream (an Envoy that restarted too) gets everything again.
        clients.append(AgentDeltaClient(channels[-1], NODE))
        fresh = _subscribe(clients[-1])
        assert fresh == held
    finally:
        for c in clients:
            c.close()
        for ch in channels:
            ch.close()
        for p in (plane, second):
            if p is not None:
                p.stop()  # idempotent
