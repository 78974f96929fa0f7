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
