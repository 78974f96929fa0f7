"""The Ansible inventory built from the catalog (meshcore.deploy.inventory), from files and from Consul."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshcore.deploy import build_inventory, host_vars, load_catalog, to_ini, to_yaml
from meshcore.deploy.inventory import _ini_value
from meshcore.errors import MeshError
from tests.cli._helpers import BOOKINFO, REPO, register_in_consul
from tests.consul_double.server import ConsulDouble

EXPECTED_GROUPS = {
    "meshcore_vms": ["gateway", "vm1", "vm2", "vm3"],
    "meshcore_gateways": ["gateway"],
    "dc_dc1": ["gateway", "vm1", "vm2", "vm3"],
    "svc_details": ["vm2"],
    "svc_ingress_gateway": ["gateway"],
    "svc_productpage": ["vm1"],
    "svc_ratings": ["vm3"],
    "svc_reviews": ["vm1", "vm2", "vm3"],
}


def assert_ansible_dynamic_inventory(doc) -> None:
    """Ansible's script-inventory contract: groups of {hosts, vars, children}, and _meta.hostvars for every host."""
    assert isinstance(doc, dict)
    hostvars = doc["_meta"]["hostvars"]
    assert isinstance(hostvars, dict) and all(isinstance(v, dict) for v in hostvars.values())
    groups = {k: v for k, v in doc.items() if k != "_meta"}
    seen_hosts = set()
    for name, group in groups.items():
        assert name.replace("_", "a").isalnum() and not name[0].isdigit(), f"group name {name!r} is not an identifier"
        assert isinstance(group, dict) and set(group) <= {"hosts", "vars", "children"}, (name, group)
        hosts = group.get("hosts", [])
        assert isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)
        assert isinstance(group.get("vars", {}), dict)
        for child in group.get("children", []):
            assert child in groups or child == "ungrouped", f"{name} names unknown child {child}"
        seen_hosts.update(hosts)
    assert seen_hosts == set(hostvars), "every host has hostvars, every hostvars entry is a host of some group"


def _groups(doc) -> dict[str, list[str]]:
    return {k: v["hosts"] for k, v in doc.items() if k not in ("_meta", "all")}


@pytest.fixture(scope="module")
def bookinfo():
    return load_catalog(f"files:{BOOKINFO}")


def test_inventory_from_files(bookinfo):
    inv = build_inventory(bookinfo.catalog)
    assert_ansible_dynamic_inventory(inv)
    assert _groups(inv) == EXPECTED_GROUPS
    assert set(inv["all"]["children"]) == set(EXPECTED_GROUPS) | {"ungrouped"}
    vm2 = inv["_meta"]["hostvars"]["vm2"]
    assert vm2 == {
        "ansible_host": "127.0.0.12",
        "meshcore_node": "vm2",
        "meshcore_datacenter": "dc1",
        "meshcore_services": [
            {"name": "details", "id": "details-v1", "kind": "", "port": 9081, "mesh_port": 21000, "version": "v1"},
            {"name": "reviews", "id": "reviews-v2", "kind": "", "port": 9082, "mesh_port": 21001, "version": "v2"},
        ],
    }
    gw = inv["_meta"]["hostvars"]["gateway"]["meshcore_services"]
    assert gw == [{"name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": 8080,
                   "mesh_port": 8080, "version": "v1"}]
    assert host_vars(bookinfo.catalog, "vm2") == vm2
    json.dumps(inv)  # JSON-ready as is


def test_inventory_from_consul_matches_the_files(bookinfo):
    with ConsulDouble(node="consul-server") as consul:
        address = consul.address
        register_in_consul(address, bookinfo.definitions.values())
        loaded = load_catalog("consul", env={"CONSUL_HTTP_ADDR": address})
    assert {n.name for n in loaded.catalog.nodes} == {"consul-server", "gateway", "vm1", "vm2", "vm3"}
    inv = build_inventory(loaded.catalog)
    assert_ansible_dynamic_inventory(inv)
    assert "consul-server" not in inv["_meta"]["hostvars"], "a node without mesh services is not a mesh VM"
    assert inv == build_inventory(bookinfo.catalog)


def test_unknown_host_is_an_error_naming_the_hosts(bookinfo):
    with pytest.raises(MeshError, match="'vm7' is not in the inventory.*gateway, vm1, vm2, vm3"):
        host_vars(bookinfo.catalog, "vm7")


def _odd_catalog(root: Path):
    """Names and values that are awkward in INI and YAML: a numeric node name, quotes, spaces, a dashed dc."""
    (root / "42").mkdir(parents=True)
    (root / "42" / "node.json").write_text(json.dumps(
        {"node_name": "42", "advertise_addr": "10.9.0.42", "datacenter": "eu-west"}))
    (root / "42" / "api.json").write_text(json.dumps({"service": {
        "name": "api-v2", "id": "api:1", "port": 8443,
        "meta": {"version": 'v2 "beta" \\ it\'s #1'},
        "connect": {"sidecar_service": {"port": 21010}}}}))
    (root / "plain").mkdir()
    (root / "plain" / "node.json").write_text(json.dumps({"node_name": "plain", "advertise_addr": "10.9.0.7"}))
    (root / "plain" / "db.json").write_text(json.dumps({"service": {"name": "db", "port": 5432}}))
    return load_catalog(f"files:{root}").catalog


def test_odd_names_and_values(tmp_path):
    inv = build_inventory(_odd_catalog(tmp_path / "catalog"))
    assert_ansible_dynamic_inventory(inv)
    assert _groups(inv) == {"meshcore_vms": ["42"], "meshcore_gateways": [], "dc_eu_west": ["42"],
                            "svc_api_v2": ["42"]}
    (svc,) = inv["_meta"]["hostvars"]["42"]["meshcore_services"]
    assert svc["version"] == 'v2 "beta" \\ it\'s #1' and svc["id"] == "api:1"


@pytest.mark.parametrize("value", ["vm1", "127.0.0.1", "42", "1e3", "True", "None", "", "a b", 'q"uote',
                                   "back\\slash", "it's", "#hash", 7, None, [{"a": None, "b": 'x "y"'}]])
def test_ini_values_read_back_as_ansible_reads_them(value):
    """Ansible's INI parser splits a host line with shlex (posix) and passes each value to ast.literal_eval."""
    (token,) = shlex.split(f"k={_ini_value(value)}", comments=True)
    text = token.split("=", 1)[1]
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        parsed = text
    assert parsed == value


def test_yaml_and_ini_carry_the_same_inventory(bookinfo):
    inv = build_inventory(bookinfo.catalog)
    doc = yaml.safe_load(to_yaml(inv))
    children = doc["all"]["children"]
    assert {g: sorted(v["hosts"]) for g, v in children.items()} == EXPECTED_GROUPS
    assert children["meshcore_vms"]["hosts"] == inv["_meta"]["hostvars"]
    ini = to_ini(inv)
    assert "[svc_reviews]\nvm1\nvm2\nvm3\n" in ini
    assert ini.count("ansible_host=") == 4


# ---------------------------------------------------------------------------- real ansible-inventory

def _ansible_inventory() -> str | None:
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else shutil.which("ansible-inventory")


ANSIBLE_INVENTORY = _ansible_inventory()
needs_ansible = pytest.mark.skipif(ANSIBLE_INVENTORY is None,
                                   reason="ansible-inventory not installed (pip install 'ansible-core>=2.16,<2.19')")


def _run_ansible_inventory(source: Path, tmp_path: Path, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "HOME": str(tmp_path), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
           "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("MESHCORE_CATALOG", None)
    result = subprocess.run([ANSIBLE_INVENTORY, "-i", str(source), "--list"], capture_output=True, text=True,
                            env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _ansible_groups(doc) -> dict[str, list[str]]:
    return {g: sorted(v.get("hosts", [])) for g, v in doc.items() if g not in ("_meta", "all", "ungrouped")}


def _wrapper(path: Path, catalog: str) -> Path:
    """The dynamic-inventory wrapper docs/deploy.md shows, calling the module directly (meshctl may not be wired)."""
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m meshcore.cli.inventory "
                    f"--catalog {shlex.quote(catalog)} \"$@\"\n")
    path.chmod(0o755)
    return path


@needs_ansible
def test_ansible_inventory_accepts_the_dynamic_inventory_script(bookinfo, tmp_path):
    script = _wrapper(tmp_path / "meshcore_inventory.sh", f"files:{BOOKINFO}")
    doc = _run_ansible_inventory(script, tmp_path)
    expected = {g: h for g, h in EXPECTED_GROUPS.items() if h}  # Ansible drops empty groups from --list
    assert {g: h for g, h in _ansible_groups(doc).items() if h} == expected
    assert doc["_meta"]["hostvars"] == build_inventory(bookinfo.catalog)["_meta"]["hostvars"]


@needs_ansible
def test_ansible_inventory_reads_the_consul_inventory(bookinfo, tmp_path):
    with ConsulDouble(node="consul-server") as consul:
        register_in_consul(consul.address, bookinfo.definitions.values())
        script = _wrapper(tmp_path / "consul_inventory.sh", "consul")
        doc = _run_ansible_inventory(script, tmp_path, {"CONSUL_HTTP_ADDR": consul.address})
    assert {g: h for g, h in _ansible_groups(doc).items() if h} == {g: h for g, h in EXPECTED_GROUPS.items() if h}


@needs_ansible
def test_ansible_reads_the_static_ini_and_yaml_files_back_exactly(tmp_path):
    inv = build_inventory(_odd_catalog(tmp_path / "catalog"))
    (tmp_path / "hosts.ini").write_text(to_ini(inv))
    (tmp_path / "hosts.yaml").write_text(to_yaml(inv))
    for name in ("hosts.ini", "hosts.yaml"):
        doc = _run_ansible_inventory(tmp_path / name, tmp_path)
        assert doc["_meta"]["hostvars"] == inv["_meta"]["hostvars"], name
        assert _ansible_groups(doc)["svc_api_v2"] == ["42"] and _ansible_groups(doc)["dc_eu_west"] == ["42"], name
