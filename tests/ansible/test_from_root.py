"""Ansible run from the repository root, as a user types it: the root ansible.cfg finds the roles, the
callback plugin and the example inventory (issue 16, item 7). ``tests/lab/test_ansible.py`` covers runs
from inside ``ansible/``."""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest

from tests.lab.test_ansible import BIN, PLAYBOOKS, _tool

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # No ANSIBLE_CONFIG: Ansible must pick ./ansible.cfg up from the working directory by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return dict(env, NO_COLOR="1", ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def test_root_config_matches_the_ansible_directory_one():
    """The two ansible.cfg files differ only in where their paths start."""
    root, inner = configparser.ConfigParser(), configparser.ConfigParser()
    root.read(ROOT / "ansible.cfg")
    inner.read(ROOT / "ansible" / "ansible.cfg")
    for section in inner.sections():
        for key, value in inner[section].items():
            expected = f"ansible/{value}" if key in ("inventory", "roles_path") else value
            assert root[section][key] == expected, f"[{section}] {key}"
    assert root["defaults"]["callback_plugins"] == "ansible/callback_plugins"


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_from_the_root(playbook):
    proc = subprocess.run([_tool("ansible-playbook"), f"ansible/playbooks/{playbook}", "--syntax-check"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_from_the_root():
    proc = subprocess.run([_tool("ansible-lint"), "--nocolor", "--profile", "production", "ansible/"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
