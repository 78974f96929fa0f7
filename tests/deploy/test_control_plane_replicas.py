"""Several control plane hosts in the Ansible inventory: the playbooks take them one at a time, every host
gets the same KEK (made once, copied without ever being logged, never overwritten), and every agent gets
every replica. Real ansible-playbook runs on this machine (local connection), no booted hosts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshcore.agent.replicas import parse_urls
from meshcore.deploy.playbook import load_profiles
from meshcore.deploy.values import Layer, parse_set, resolve

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), NO_COLOR="1", ANSIBLE_NOCOLOR="1",
                ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"), ANSIBLE_STDOUT_CALLBACK="default")


def _inventory(tmp_path: Path, **cp_vars) -> Path:
    python = sys.executable
    hosts = {}
    for name, address in (("cp1", "10.0.0.5"), ("cp2", "10.0.0.6")):
        hosts[name] = {"ansible_host": address, "ansible_connection": "local", "ansible_python_interpreter": python,
                       "meshcore_control_plane_kek_file": str(tmp_path / name / "kek"), **cp_vars}
        (tmp_path / name).mkdir(exist_ok=True)
    inventory = {"all": {"children": {
        "meshcore_control_plane": {"hosts": hosts},
        "meshcore_vms": {"hosts": {"vm1": {"ansible_host": "10.0.0.11", "ansible_connection": "local",
                                           "ansible_python_interpreter": python}}}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def _play(tmp_path: Path, inventory: Path, play: list, *extra: str) -> subprocess.CompletedProcess:
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra],
                          cwd=ANSIBLE, env=_env(), capture_output=True, text=True, timeout=300)


KEK_PLAY = [{"name": "KEK on every control plane host", "hosts": "meshcore_control_plane", "serial": 1,
             "gather_facts": False, "become": False,
             "vars": {"meshcore_common_python": sys.executable},
             "tasks": [{"name": "The role's KEK tasks", "ansible.builtin.include_role": {
                 "name": "meshcore_control_plane", "tasks_from": "kek"}}]}]


def test_every_control_plane_host_gets_the_first_hosts_kek_and_it_is_never_logged(tmp_path):
    inventory = _inventory(tmp_path)
    run = _play(tmp_path, inventory, KEK_PLAY, "-vvv")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    first, second = (tmp_path / "cp1" / "kek"), (tmp_path / "cp2" / "kek")
    kek = first.read_text()
    assert len(base64.b64decode(kek)) == 32 and second.read_text() == kek
    assert oct(second.stat().st_mode & 0o777) == "0o600"
    logged = run.stdout + run.stderr
    assert kek.strip() not in logged and base64.b64encode(kek.encode()).decode() not in logged
    assert "censored" in logged  # no_log at work, even at -vvv

    # Again, now with the KEK coming from the controller (the first host's copy): nothing changes.
    again = _play(tmp_path, _inventory(tmp_path, meshcore_control_plane_kek_local=str(first)), KEK_PLAY)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    assert second.read_text() == kek

    second.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")  # a host with another KEK
    other = second.read_text()
    refused = _play(tmp_path, inventory, KEK_PLAY)
    assert refused.returncode != 0 and "differs from the one on" in refused.stdout, refused.stdout[-3000:]
    assert second.read_text() == other  # not overwritten
    assert other.strip() not in refused.stdout + refused.stderr and kek.strip() not in refused.stdout


def test_agents_get_every_replica_and_the_replicas_go_one_at_a_time(tmp_path):
    inventory = _inventory(tmp_path)
    out = tmp_path / "agent.yaml"
    values = resolve([Layer("--set", parse_set("controlPlane.replicas=[https://cp-a.example:15443, "
                                               "https://cp-b.example:15443]"))], load_profiles(ANSIBLE))
    extra = values.extra_vars()
    play = [{"name": "Render the agent's settings", "hosts": "vm1", "gather_facts": False, "become": False,
             "vars_files": [str(ANSIBLE / "roles" / "meshcore_agent" / "defaults" / "main.yml")],
             "tasks": [{"name": "Template", "ansible.builtin.template": {
                 "src": str(ANSIBLE / "roles" / "meshcore_agent" / "templates" / "agent.yaml.j2"),
                 "dest": str(out), "mode": "0644"}},
                 {"name": "Template with the replicas as meshctl install --set controlPlane.replicas passes them",
                  "vars": {"meshcore_agent_control_plane": extra["meshcore_agent_control_plane"]},
                  "ansible.builtin.template": {
                      "src": str(ANSIBLE / "roles" / "meshcore_agent" / "templates" / "agent.yaml.j2"),
                      "dest": str(tmp_path / "agent-set.yaml"), "mode": "0644"}}]}]
    run = _play(tmp_path, inventory, play, "-e", "meshcore_agent_control_plane_from_consul=meshcore-control-plane")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    settings = yaml.safe_load(out.read_text())
    assert parse_urls(settings["control_plane"]) == ("https://10.0.0.5:15443", "https://10.0.0.6:15443")
    assert settings["control_plane_from_consul"] == "meshcore-control-plane"
    from_set = yaml.safe_load((tmp_path / "agent-set.yaml").read_text())
    assert parse_urls(from_set["control_plane"]) == ("https://cp-a.example:15443", "https://cp-b.example:15443")

    for name in ("site.yml", "upgrade.yml"):
        plays = yaml.safe_load((ANSIBLE / "playbooks" / name).read_text())
        # the plays that install or restart the control plane (not the trust federation's, which reads and imports
        # bundles on every datacenter's first host at once)
        cp = [p for p in plays if p.get("hosts") == "meshcore_control_plane"
              and {"role": "meshcore_trust_federation"} not in p.get("roles", [])]
        assert cp and all(p.get("serial") == 1 and p.get("any_errors_fatal") for p in cp), name
    check = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory),
                            "playbooks/site.yml", "playbooks/upgrade.yml"], cwd=ANSIBLE, env=_env(),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("role", ["meshcore_control_plane", "meshcore_agent"])
def test_role_argument_specs_name_the_replica_settings(role):
    specs = yaml.safe_load((ANSIBLE / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    wanted = {"meshcore_control_plane": {"meshcore_control_plane_kek_host", "meshcore_control_plane_kek_local",
                                         "meshcore_control_plane_max_stream_age"},
              "meshcore_agent": {"meshcore_agent_control_plane", "meshcore_agent_control_plane_from_consul"}}[role]
    assert wanted <= set(options)
