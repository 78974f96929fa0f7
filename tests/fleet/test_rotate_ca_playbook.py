"""ansible/playbooks/rotate-ca.yml passes --syntax-check (ansible-lint production runs in tests/lab/test_ansible.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"


def test_rotate_ca_syntax():
    tool = Path(sys.executable).parent / "ansible-playbook"
    if not tool.exists():
        pytest.skip("ansible-playbook (ansible-core) is not installed in the venv")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(tool), "--syntax-check", "-i", "inventories/example/hosts.yml",
                           "playbooks/rotate-ca.yml"], cwd=ANSIBLE, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rotate_ca_order_hold_then_federate_then_wait_then_push_then_finish_then_federate_then_push():
    plays = yaml.safe_load((ANSIBLE / "playbooks" / "rotate-ca.yml").read_text())
    # the rotation is one operation on the shared CA: it runs once, on the first control plane host; the other
    # trust domains get the new root while it is held (before any certificate comes from it), the old one's
    # retirement after the finish
    vms, cps, first = "meshcore_vms:meshcore_mesh_gateway", "meshcore_control_plane", "meshcore_control_plane[0]"
    assert [p["hosts"] for p in plays] == [first, cps, first, vms, first, cps, vms]
    assert [p.get("roles") for p in plays if p["hosts"] == cps] == [[{"role": "meshcore_trust_federation"}]] * 2
    argv = [t["ansible.builtin.command"]["argv"] for p in plays for t in p.get("tasks", [])
            if "ansible.builtin.command" in t]
    rotate = [a[1:4] for a in argv if a[2] == "rotate"]
    assert rotate == [["ca", "rotate", "--hold"], ["ca", "rotate", "--resume"], ["ca", "rotate", "--finish"]]
    for p in (plays[3], plays[6]):
        (copy,) = [t["ansible.builtin.copy"] for t in p["tasks"]]
        assert "meshcore_agent_ca_file" in copy["dest"]
