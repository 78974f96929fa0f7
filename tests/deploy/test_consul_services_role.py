"""The meshcore_consul_services role: a real ansible-playbook run (local connection) writes sidecar definitions the
catalog reads with their upstreams' datacenter and mesh gateway modes (docs/multi-dc.md); a second run changes
nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from meshcore.catalog.definitions import load_node_dir

from .test_control_plane_replicas import _play

PLAY = [{"name": "Service definitions", "hosts": "all", "gather_facts": False, "become": False,
         "roles": ["meshcore_consul_services"]}]


def test_definitions_carry_mesh_gateway_modes_and_upstream_datacenters(tmp_path: Path):
    consul_d = tmp_path / "vm1" / "consul.d"
    services = [
        {"name": "reviews", "id": "reviews-v2", "port": 9082, "mesh_port": 21002, "version": "v2",
         "mesh_gateway": "local",
         "upstreams": [{"name": "ratings", "port": 9093},
                       {"name": "store", "port": 9094, "datacenter": "dc2", "mesh_gateway": "remote"}]},
        {"name": "details", "id": "details-vm1", "port": 9081, "mesh_port": 21001},
    ]
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"vm1": {
        "ansible_host": "10.0.1.13", "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "meshcore_consul_services_config_dir": str(consul_d), "meshcore_consul_services_definitions": services}}}}))
    run = _play(tmp_path, inventory, PLAY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    body = json.loads((consul_d / "meshcore-reviews-v2.json").read_text())["service"]
    proxy = body["connect"]["sidecar_service"]["proxy"]
    assert proxy["mesh_gateway"] == {"mode": "local"}
    assert proxy["upstreams"][1] == {"destination_name": "store", "local_bind_address": "127.0.0.1",
                                     "local_bind_port": 9094, "datacenter": "dc2", "mesh_gateway": {"mode": "remote"}}
    details = json.loads((consul_d / "meshcore-details-vm1.json").read_text())["service"]
    assert "mesh_gateway" not in details["connect"]["sidecar_service"]["proxy"]

    (consul_d / "node.json").write_text(json.dumps({"node_name": "vm1", "advertise_addr": "10.0.1.13"}))
    reviews = next(i for i in load_node_dir(consul_d).instances() if i.service == "reviews")
    ups = {u.destination_name: u for u in reviews.upstreams}
    assert (ups["ratings"].datacenter, ups["ratings"].mesh_gateway, ups["ratings"].mesh_gateway_scope) == (
        None, "local", "proxy")
    assert (ups["store"].datacenter, ups["store"].mesh_gateway, ups["store"].mesh_gateway_scope) == (
        "dc2", "remote", "upstream")
    again = _play(tmp_path, inventory, PLAY)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
