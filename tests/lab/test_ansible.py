"""ansible/ passes ansible-lint at the production profile, and every playbook passes --syntax-check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ("site.yml", "upgrade.yml", "uninstall.yml", "rotate-ca.yml")


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install 'ansible-lint>=25,<26' into the venv)")
    return found


def _env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), NO_COLOR="1", ANSIBLE_NOCOLOR="1",
                PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def test_ansible_lint_production_profile():
    proc = subprocess.run([_tool("ansible-lint"), "--nocolor", "--profile", "production"], cwd=ANSIBLE,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook):
    proc = subprocess.run([_tool("ansible-playbook"), "--syntax-check", "-i", "inventories/example/hosts.yml",
                           f"playbooks/{playbook}"], cwd=ANSIBLE, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_roles_have_the_expected_layout():
    for role in ("meshcore_common", "meshcore_control_plane", "meshcore_agent", "meshcore_consul_services",
                 "meshcore_mesh_policy", "bookinfo"):
        for part in ("defaults/main.yml", "handlers/main.yml", "tasks/main.yml", "meta/main.yml",
                     "meta/argument_specs.yml"):
            assert (ANSIBLE / "roles" / role / part).is_file(), f"{role}/{part} missing"
        assert any((ANSIBLE / "roles" / role / "templates").iterdir()), f"{role} has no templates"


def test_example_inventory_groups():
    proc = subprocess.run([_tool("ansible-inventory"), "-i", "inventories/example/hosts.yml", "--list"],
                          cwd=ANSIBLE, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json
    data = json.loads(proc.stdout)
    assert data["meshcore_control_plane"]["hosts"] == ["cp1"]
    assert sorted(data["meshcore_vms"]["hosts"]) == ["vm1", "vm2", "vm3"]
    services = data["_meta"]["hostvars"]["vm1"]["meshcore_consul_services_definitions"]
    assert {s["id"] for s in services} == {"productpage-v1", "reviews-v1"}


# --------------------------------------------------------------- two datacenters (the two-datacenter lab's inventory)

def _two_dc_inventory(tmp_path: Path) -> Path:
    import yaml

    def host(addr: str) -> dict:
        return {"ansible_host": addr, "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    dcs = {"dc1": {"cp": "10.213.0.11", "cp2": "10.213.0.12", "vm1": "10.213.0.13", "gw1": "10.213.0.14"},
           "dc2": {"cp3": "10.213.1.11", "vm4": "10.213.1.12", "gw2": "10.213.1.13"}}
    every = {name: host(addr) for dc in dcs.values() for name, addr in dc.items()}
    inventory = {"all": {"hosts": every, "children": {
        **{f"dc_{dc}": {"hosts": {h: None for h in members}, "vars": {"meshcore_datacenter": dc}}
           for dc, members in dcs.items()},
        "lab_consul": {"hosts": {"cp": None, "cp3": None}},
        "meshcore_control_plane": {"hosts": {"cp": None, "cp2": None, "cp3": None}},
        "meshcore_vms": {"hosts": {"vm1": None, "vm4": None}},
        "meshcore_mesh_gateway": {"hosts": {"gw1": None, "gw2": None}}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def test_each_datacenter_gets_its_own_control_plane_and_consul_stand_in(tmp_path):
    """dc_<name> groups and meshcore_datacenter: agents, KEK and operator token stay within their datacenter."""
    import json

    out = tmp_path / "vars.json"
    show = {"agent_cp": "{{ meshcore_agent_control_plane }}", "token_host": "{{ meshcore_agent_cp_host }}",
            "kek_host": "{{ meshcore_control_plane_kek_host }}",
            "cp_hosts": "{{ meshcore_control_plane_datacenter_hosts }}"}
    defaults = [str(ANSIBLE / "roles" / r / "defaults" / "main.yml")
                for r in ("meshcore_control_plane", "meshcore_agent", "lab_consul_double")]
    play = [{"name": "What each host resolves", "hosts": "all", "gather_facts": False, "become": False,
             "vars_files": defaults,
             "tasks": [{"name": "Collect", "ansible.builtin.set_fact": {"resolved": show}},
                       {"name": "Write", "run_once": True, "ansible.builtin.copy": {
                           "dest": str(out), "mode": "0644",
                           "content": "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, "
                                      "'resolved'))) | to_json }}"}},
                       {"name": "The stand-in's unit", "when": "inventory_hostname in groups['lab_consul']",
                        "vars": {"lab_consul_double_wan": "{{ {'dc2': 'http://10.213.2.13:8500'} if "
                                 "meshcore_datacenter == 'dc1' else {'dc1': 'http://10.213.2.11:8500'} }}"},
                        "ansible.builtin.template": {
                            "src": str(ANSIBLE / "roles" / "lab_consul_double" / "templates" / "consul-double.service.j2"),
                            "dest": str(tmp_path / "{{ inventory_hostname }}.service"), "mode": "0644"}},
                       {"name": "The stand-in's agents and WAN peers", "when": "inventory_hostname in groups['lab_consul']",
                        "vars": {"lab_consul_double_wan": "{{ {'dc2': 'http://10.213.2.13:8500'} if "
                                 "meshcore_datacenter == 'dc1' else {'dc1': 'http://10.213.2.11:8500'} }}"},
                        "ansible.builtin.template": {
                            "src": str(ANSIBLE / "roles" / "lab_consul_double" / "templates" / "stand-in.json.j2"),
                            "dest": str(tmp_path / "{{ inventory_hostname }}.json"), "mode": "0644"}}]}]
    (tmp_path / "play.yml").write_text(__import__("yaml").safe_dump(play))
    proc = subprocess.run([_tool("ansible-playbook"), "-i", str(_two_dc_inventory(tmp_path)), str(tmp_path / "play.yml")],
                          cwd=ANSIBLE, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["vm1"]["agent_cp"] == "https://10.213.0.11:15443,https://10.213.0.12:15443"
    assert got["vm4"]["agent_cp"] == "https://10.213.1.11:15443" and got["vm4"]["token_host"] == "cp3"
    assert got["gw1"]["token_host"] == "cp" and got["gw2"]["token_host"] == "cp3"
    assert got["cp2"]["kek_host"] == "cp" and got["cp3"]["kek_host"] == "cp3"
    assert got["cp3"]["cp_hosts"] == ["cp3"] and got["cp2"]["cp_hosts"] == ["cp", "cp2"]
    # the unit names the datacenter; the agents and WAN peers are in the file it re-reads on reload
    assert "--datacenter dc1 --config /opt/meshcore-lab/stand-in.json" in (tmp_path / "cp.service").read_text()
    assert "--datacenter dc2 --config" in (tmp_path / "cp3.service").read_text()
    dc1 = json.loads((tmp_path / "cp.json").read_text())
    dc2 = json.loads((tmp_path / "cp3.json").read_text())
    assert dc1 == {"agents": {"vm1": "10.213.0.13", "gw1": "10.213.0.14"}, "wan": {"dc2": "http://10.213.2.13:8500"}}
    assert dc2 == {"agents": {"vm4": "10.213.1.12", "gw2": "10.213.1.13"}, "wan": {"dc1": "http://10.213.2.11:8500"}}


def test_site_yml_gives_mesh_gateway_hosts_the_gateway_role_and_no_service_definitions():
    import yaml

    plays = yaml.safe_load((ANSIBLE / "playbooks" / "site.yml").read_text())
    [vms] = [p for p in plays if "meshcore_agent" in [r["role"] for r in p.get("roles", [])]]
    assert vms["hosts"] == "meshcore_vms:meshcore_mesh_gateway"
    roles = {r["role"]: r.get("when", "") for r in vms["roles"]}
    assert "not in groups['meshcore_mesh_gateway']" in roles["meshcore_consul_services"]
    assert roles["meshcore_mesh_gateway"].startswith("inventory_hostname in groups['meshcore_mesh_gateway']")
    assert all(p.get("gather_facts") is False for p in plays)
