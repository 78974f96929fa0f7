"""``meshctl install`` end to end with a real ansible-playbook, on this machine only.

The playbook is not meshcore's site.yml (that would install meshcore here): the test builds an ansible
directory with meshcore's profiles and progress callback and a small site.yml whose two hosts, both
``ansible_connection=local``, write the extra-vars they received into the test's temporary directory.
That exercises everything meshctl does around Ansible: values -> extra-vars file -> ansible-playbook ->
callback events -> progress lines, the JSON summary, and exit codes naming the failed host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SITE = """\
- name: Record what meshctl passed
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the extra-vars this host received
      ansible.builtin.copy:
        content: "{{ {'deny': meshcore_mesh_policy_default_deny, 'mtls': meshcore_mesh_policy_mtls_mode,
                      'tasks_max': meshcore_agent_tasks_max | default('unset'), 'leaf_ttl': meshcore_control_plane_leaf_ttl,
                      'profile': meshcore_install_profile} | to_nice_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"

    - name: Explain itself
      ansible.builtin.debug:
        msg: "host {{ inventory_hostname }} got profile {{ meshcore_install_profile }}"

    - name: Refuse debug logging on beta
      ansible.builtin.fail:
        msg: "beta refuses agent.logLevel=debug"
      when: inventory_hostname == 'beta' and meshcore_agent_log_level == 'debug'
"""


@pytest.fixture
def setup(tmp_path):
    if not (BIN / "ansible-playbook").exists() and not shutil.which("ansible-playbook"):
        pytest.skip("ansible-playbook is not installed (pip install 'ansible-core>=2.16,<2.19')")
    ansible = tmp_path / "ansible"
    (ansible / "playbooks").mkdir(parents=True)
    (ansible / "playbooks" / "site.yml").write_text(SITE)
    shutil.copytree(ROOT / "ansible" / "profiles", ansible / "profiles")
    shutil.copytree(ROOT / "ansible" / "callback_plugins", ansible / "callback_plugins")
    (ansible / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = False\ninterpreter_python = auto_silent\n")
    out = tmp_path / "out"
    out.mkdir()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "out_dir": str(out)},
        "hosts": {"alpha": None, "beta": None}}}))
    return {"ansible": ansible, "out": out, "inventory": inventory, "tmp": tmp_path}


def meshctl(setup, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(setup["tmp"]))
    return subprocess.run([str(BIN / "meshctl"), "install", "--ansible-dir", str(setup["ansible"]), *args],
                          capture_output=True, text=True, timeout=240, env=env, cwd=setup["tmp"])


def test_install_runs_the_playbook_with_the_values_as_extra_vars(setup):
    proc = meshctl(setup, "-i", str(setup["inventory"]), "--set", "security.defaultDeny=true",
                   "--set", "resources.agent.tasksMax=640", "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in ("alpha", "beta"):
        got = json.loads((setup["out"] / f"{host}.json").read_text())
        assert got == {"deny": True, "mtls": "STRICT", "tasks_max": 640, "leaf_ttl": "24h", "profile": "production"}
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["failed_hosts"] == [] and summary["profile"] == "production"
    assert summary["hosts"]["alpha"] == {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 1}
    # progress went to stderr, one line per host result, as it happened
    assert "PLAY Record what meshctl passed" in proc.stderr
    assert any(line.split()[:2] == ["alpha", "changed"] and "Write the extra-vars" in line
               for line in proc.stderr.splitlines())
    assert "host beta got profile production" in proc.stderr  # debug messages are shown
    # the extra-vars file lived in a private temporary directory that is gone now
    assert not list(setup["tmp"].glob("meshctl-install-*"))


def test_a_second_run_changes_nothing_and_the_table_output_has_a_recap(setup):
    assert meshctl(setup, "-i", str(setup["inventory"])).returncode == 0
    proc = meshctl(setup, "-i", str(setup["inventory"]))
    assert proc.returncode == 0, proc.stderr
    assert "RECAP" in proc.stdout
    assert "alpha        ok=2 changed=0 failed=0" in proc.stdout


def test_a_failing_host_makes_install_exit_nonzero_naming_it(setup):
    proc = meshctl(setup, "-i", str(setup["inventory"]), "--set", "agent.logLevel=debug", "-o", "json")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert summary["ok"] is False and summary["failed_hosts"] == ["beta"]
    assert summary["hosts"]["beta"]["failed"] == 1 and summary["hosts"]["alpha"]["failed"] == 0
    assert "meshctl install: failed on beta" in proc.stderr
    assert "FAILED" in proc.stderr and "beta refuses agent.logLevel=debug" in proc.stderr


def test_check_mode_changes_nothing_and_shows_the_diff(setup):
    proc = meshctl(setup, "-i", str(setup["inventory"]), "--set", "profile=demo", "--check")
    assert proc.returncode == 0, proc.stderr
    assert not list(setup["out"].iterdir())
    assert "check mode" in proc.stdout
    assert '+    "mtls": "PERMISSIVE",' in proc.stdout  # the diff of the file it would write


def test_invalid_values_run_nothing(setup):
    proc = meshctl(setup, "-i", str(setup["inventory"]), "--set", "security.defaultDenied=true",
                   "--set", "ca.leafTTL=soon")
    assert proc.returncode == 1
    assert "invalid values, nothing run: 2 error(s)" in proc.stderr
    assert "security.defaultDenied: unknown key; did you mean 'security.defaultDeny'?" in proc.stderr
    assert "ca.leafTTL: 'soon' is not a duration" in proc.stderr
    assert not list(setup["out"].iterdir())


def test_show_values_prints_values_and_extra_vars_and_runs_nothing(setup, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("profile: demo\nca:\n  leafTTL: 2h\n")
    proc = meshctl(setup, "-f", str(values), "--set", "ca.leafTTL=3h", "--show-values", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["profile"] == "demo" and data["values"]["ca"]["leafTTL"] == "3h"
    assert data["origins"]["ca.leafTTL"] == "--set ca.leafTTL=3h" and data["origins"]["profile"] == str(values)
    assert data["extra_vars"]["meshcore_mesh_policy_mtls_mode"] == "PERMISSIVE"
    assert not list(setup["out"].iterdir())


def test_missing_inventory_and_unknown_playbook_are_explained(setup):
    proc = meshctl(setup)
    assert proc.returncode == 1 and "-i INVENTORY" in proc.stderr
    proc = meshctl(setup, "-i", str(setup["inventory"]), "--playbook", "nope.yml")
    assert proc.returncode == 1 and "no such playbook" in proc.stderr and "site.yml" in proc.stderr


def test_the_real_ansible_dir_and_profiles_are_found_from_the_checkout():
    proc = subprocess.run([str(BIN / "meshctl"), "install", "--show-values", "-o", "json",
                           "--set", "security.defaultDeny=true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["playbook"] == str(ROOT / "ansible" / "playbooks" / "site.yml")
    assert data["extra_vars"]["meshcore_mesh_policy_default_deny"] is True
