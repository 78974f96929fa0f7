"""The meshcore_mesh_gateway role: a real ansible-playbook run on this machine (local connection) writes a
mesh-gateway definition the catalog reads as a gateway with its LAN and WAN addresses; a second run changes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from meshcore.catalog.definitions import load_node_dir

from .test_control_plane_replicas import _play


def test_role_writes_a_mesh_gateway_the_catalog_accepts(tmp_path: Path):
    consul_d = tmp_path / "gw1" / "consul.d"
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"gw1": {
        "ansible_host": "10.0.1.20", "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "meshcore_mesh_gateway_config_dir": str(consul_d), "meshcore_mesh_gateway_wan_address": "198.51.100.7",
        "meshcore_mesh_gateway_wan_port": 443}}}}))
    play = [{"name": "Mesh gateway", "hosts": "all", "gather_facts": False, "become": False,
             "roles": ["meshcore_mesh_gateway"]}]
    run = _play(tmp_path, inventory, play)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    written = consul_d / "meshcore-mesh-gateway-gw1.json"
    service = json.loads(written.read_text())["service"]
    assert service["kind"] == "mesh-gateway" and service["meta"] == {"envoy_mesh_gateway_bind_tagged_addresses": "false"}
    (consul_d / "node.json").write_text(json.dumps({"node_name": "gw1", "advertise_addr": "10.0.1.20"}))
    [gw] = load_node_dir(consul_d).instances()
    assert (gw.service, gw.kind, gw.mesh_address, gw.mesh_port, gw.wan_address, gw.wan_port) == (
        "mesh-gateway", "mesh-gateway", "10.0.1.20", 8443, "198.51.100.7", 443)
    again = _play(tmp_path, inventory, play)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
