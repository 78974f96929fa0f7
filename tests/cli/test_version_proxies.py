"""``meshctl version``: each proxy's Envoy and agent versions, from what its ADS node reports (issue 16)."""

from __future__ import annotations

import contextlib

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshcore import __version__, naming
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.cli.main import main
from meshcore.controlplane.proxy_versions import versions_of
from tests.controlplane.test_restart import AgentDeltaClient, _channel, _subscribe, _wait

from ._helpers import run_json


class VersionedClient(AgentDeltaClient):
    """A delta stream whose node says what a real Envoy and agent say: a build version, the agent's version."""

    agent = __version__

    def _node(self, node_id: str | None) -> base_pb2.Node:
        node = super()._node(node_id)
        node.metadata.update({"agent_version": self.agent})
        node.user_agent_name = "envoy"
        node.user_agent_build_version.version.major_number = 1
        node.user_agent_build_version.version.minor_number = 40
        node.user_agent_build_version.version.patch = 2
        return node


@contextlib.contextmanager
def _connected(plane, node: str, agent: str):
    key = new_private_key()
    spiffe_id = naming.node_spiffe_id(plane.ca.trust_domain, node)
    issued = plane.ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id, node=node)
    channel = _channel(plane, key_to_pem(key), issued.chain_pem)
    client = VersionedClient(channel, node)
    client.agent = agent
    try:
        yield client
    finally:
        client.close()
        channel.close()


def test_version_lists_each_proxys_envoy_and_agent(plane, server, capsys):
    with _connected(plane, "vm1", __version__) as c1, _connected(plane, "vm2", "0.0.9") as c2:
        _subscribe(c1)
        _subscribe(c2)
        _wait(lambda: {p.node for p in plane.status_view().proxies if p.agent_version} >= {"vm1", "vm2"},
              "both proxies' versions in the status")
        data = run_json(capsys, "version", "--server", server, "-o", "json")
        by_node = {p["node"]: p for p in data["proxies"]}
        assert by_node["vm1"] == {"node": "vm1", "envoy": "1.40.2", "agent": __version__, "connected": True}
        assert by_node["vm2"]["agent"] == "0.0.9"
        assert by_node["vm3"]["envoy"] == "" and not by_node["vm3"]["connected"], "in the catalog, not connected"
        assert main(["version", "--server", server]) == 0
        table = capsys.readouterr().out
        assert "NODE" in table and "ENVOY" in table and "AGENT" in table
        assert "agent differs from the control plane" in next(line for line in table.splitlines() if "vm2" in line)
        assert "not connected" in next(line for line in table.splitlines() if line.startswith("vm3"))


def test_versions_of_a_node_are_bounded_and_printable():
    node = base_pb2.Node(id="n", user_agent_version="1.2.3\nforged log line " + "x" * 100)
    node.metadata.CopyFrom(struct_pb2.Struct())
    v = versions_of(node)
    assert "\n" not in v.envoy and len(v.envoy) == 64 and v.agent == ""
