"""Hosts from real Ansible inventories, read with ansible-inventory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from meshcore.fleet import InventoryError, find_host, hosts_from_inventory, load_inventory

ROOT = Path(__file__).resolve().parents[2]
needs_ansible = pytest.mark.skipif(
    not (Path(sys.executable).parent / "ansible-inventory").exists() and not shutil.which("ansible-inventory"),
    reason="ansible-inventory (ansible-core) is not installed")


@needs_ansible
def test_the_example_yaml_inventory():
    hosts = load_inventory(str(ROOT / "ansible" / "inventories" / "example" / "hosts.yml"))
    by = {h.name: h for h in hosts}
    assert set(by) == {"cp1", "vm1", "vm2", "vm3"}
    assert by["cp1"].address == "10.0.0.5" and by["cp1"].user == "admin" and by["cp1"].is_control_plane
    assert by["vm2"].groups == ("bookinfo", "meshcore_vms") and by["vm2"].is_vm and not by["vm2"].is_control_plane
    assert by["vm1"].port == 22 and by["vm1"].strict_host_keys


@needs_ansible
def test_an_ini_inventory_with_ports_keys_and_children(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        "[meshcore_control_plane]\ncp ansible_host=127.0.0.1 ansible_port=2222\n\n"
        "[web]\nvm1 ansible_host=127.0.0.2 ansible_user=ops ansible_ssh_private_key_file=/k/id\n\n"
        "[meshcore_vms:children]\nweb\n\n"
        "[all:vars]\nansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
    hosts = load_inventory(str(inv))
    cp, vm1 = find_host(hosts, "cp"), find_host(hosts, "127.0.0.2")
    assert (cp.address, cp.port, cp.user) == ("127.0.0.1", 2222, None)
    assert (vm1.name, vm1.user, vm1.key_file) == ("vm1", "ops", "/k/id")
    assert vm1.groups == ("meshcore_vms", "web")
    assert not vm1.strict_host_keys
    assert [h.name for h in load_inventory(str(inv), limit="meshcore_vms")] == ["vm1"]
    with pytest.raises(InventoryError, match="no host 'vm9'"):
        find_host(hosts, "vm9")


def test_missing_inventory_says_what_to_do(tmp_path):
    with pytest.raises(InventoryError, match="pass -i PATH"):
        load_inventory(str(tmp_path / "nope.yml"))


def test_bad_port_is_reported_with_the_host():
    data = {"_meta": {"hostvars": {"h": {"ansible_port": "ssh"}}}, "all": {"children": ["ungrouped"]},
            "ungrouped": {"hosts": ["h"]}}
    with pytest.raises(InventoryError, match="host h: ansible_port"):
        hosts_from_inventory(data)
