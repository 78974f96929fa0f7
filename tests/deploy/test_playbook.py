"""meshctl install's Ansible edge: progress lines from callback events, diffs, the summary, the extra-vars file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from meshcore.deploy import playbook as pb
from meshcore.errors import ConfigError, ValidationError

ROOT = Path(__file__).resolve().parents[2]


def test_play_and_result_lines():
    assert pb.format_event({"event": "play", "name": "Control plane"}) == ["PLAY Control plane"]
    line, = pb.format_event({"event": "result", "host": "cp", "status": "changed", "task": "role : Write env",
                             "msg": "", "action": "ansible.builtin.template"})
    assert line.split() == ["cp", "changed", "role", ":", "Write", "env"]
    line, = pb.format_event({"event": "result", "host": "vm1", "status": "failed", "task": "Start it",
                             "msg": "Unit not found.\n  details"})
    assert "FAILED" in line and line.endswith("Start it: Unit not found. details")
    line, = pb.format_event({"event": "result", "host": "vm1", "status": "unreachable", "task": "Gathering Facts",
                             "msg": "ssh: connect to host 10.0.0.1 port 22: No route"})
    assert "UNREACHABLE" in line and "No route" in line


def test_skipped_and_argument_checks_are_quiet_unless_asked():
    skipped = {"event": "result", "host": "cp", "status": "skipped", "task": "Fetch"}
    assert pb.format_event(skipped) == []
    assert pb.format_event(skipped, show_skipped=True)[0].split()[1] == "skipped"
    spec = {"event": "result", "host": "cp", "status": "ok",
            "task": "meshcore_agent : Validating arguments against arg spec 'main' - Run the agent"}
    assert pb.format_event(spec) == []
    assert pb.format_event({**spec, "status": "failed", "msg": "bad type"})  # a failing check is shown


def test_debug_messages_are_shown_and_other_ok_messages_are_not():
    said = {"event": "result", "host": "cp", "status": "ok", "task": "Say why", "msg": "check mode: x",
            "action": "ansible.builtin.debug"}
    assert pb.format_event(said)[0].endswith("Say why: check mode: x")
    assert pb.format_event({**said, "action": "ansible.builtin.copy"})[0].endswith("Say why")


def test_diffs_are_unified_and_capped():
    diff = [{"before": "a\nb\n", "after": "a\nc\n", "before_header": "/etc/x", "after_header": "/etc/x"}]
    event = {"event": "result", "host": "cp", "status": "changed", "task": "Write", "diff": diff}
    lines = pb.format_event(event, show_diff=True)
    assert lines[1:] == ["      --- /etc/x", "      +++ /etc/x", "      @@ -1,2 +1,2 @@", "       a", "      -b",
                         "      +c"]
    assert pb.format_event(event) == lines[:1]  # diffs only when asked (--check)
    assert pb.format_diffs([{"before": {"state": "absent"}, "after": {"state": "directory"}}])[-2:] == [
        "-state: absent", "+state: directory"]
    assert pb.format_diffs([{"prepared": "changed: x"}]) == ["changed: x"]
    assert pb.format_diffs([{"dst_binary": 1, "after_header": "/opt/w.whl"}]) == ["binary file /opt/w.whl"]
    big = pb.format_diffs([{"before": "", "after": "".join(f"{i}\n" for i in range(500))}])
    assert len(big) == pb.DIFF_MAX_LINES + 1 and big[-1].startswith("... ")


def test_summary_names_failed_and_unreachable_hosts():
    result = pb.RunResult(2, {"cp": {"ok": 5, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 2},
                              "vm1": {"ok": 1, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0},
                              "vm2": {"ok": 0, "changed": 0, "failed": 0, "unreachable": 1, "skipped": 0}})
    s = pb.summarize(result, profile="production")
    assert s["ok"] is False and s["failed_hosts"] == ["vm1", "vm2"] and s["returncode"] == 2
    assert s["hosts"]["cp"] == {"ok": 5, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 2}
    assert pb.RunResult(0, {}).ok is False  # no host ran at all is not a success
    assert pb.RunResult(0, {"cp": {"ok": 1, "failed": 0, "unreachable": 0}}).ok is True


def test_extra_vars_file_is_private_and_never_overwritten(tmp_path):
    path = pb.write_extra_vars(tmp_path, {"meshcore_mesh_policy_default_deny": True})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"meshcore_mesh_policy_default_deny": True}
    with pytest.raises(FileExistsError):
        pb.write_extra_vars(tmp_path, {})


def test_command_and_environment_use_the_callback_and_check_diff(tmp_path):
    run = pb.PlaybookRun(ROOT / "ansible", ROOT / "ansible" / "playbooks" / "site.yml", "/inv", {}, check=True,
                         limit="cp")
    cmd = run.command("/tmp/x/values.json")
    assert cmd[1:] == ["-i", "/inv", str(ROOT / "ansible" / "playbooks" / "site.yml"), "-e", "@/tmp/x/values.json",
                       "--check", "--diff", "--limit", "cp"]
    env = run.environment()
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "meshcore_events"
    assert env["ANSIBLE_CALLBACK_PLUGINS"].split(":")[0] == str(ROOT / "ansible" / "callback_plugins")
    assert env["ANSIBLE_CONFIG"] == str(ROOT / "ansible" / "ansible.cfg")


def test_files_and_directories_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="not meshcore's ansible directory"):
        pb.find_ansible_dir(str(tmp_path))
    assert pb.find_ansible_dir() == ROOT / "ansible"
    with pytest.raises(ConfigError, match="no such playbook .* rotate-ca.yml, site.yml, uninstall.yml, upgrade.yml"):
        pb.resolve_playbook(ROOT / "ansible", "sites.yml")
    assert pb.resolve_playbook(ROOT / "ansible", "upgrade.yml").name == "upgrade.yml"
    bad = tmp_path / "v.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValidationError, match="a values file is a mapping"):
        pb.load_values_file(str(bad))
    bad.write_text("a: [\n")
    with pytest.raises(ValidationError, match="not valid YAML"):
        pb.load_values_file(str(bad))
    with pytest.raises(ConfigError, match="cannot read it"):
        pb.load_values_file(str(tmp_path / "missing.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    assert pb.load_values_file(str(tmp_path / "empty.yaml")) == {}
