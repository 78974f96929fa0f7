"""The systemd units in ``systemd/``: systemd itself accepts them, and what they promise stays there.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` (systemd 252, Debian bookworm)
read the real unit files; only the ``ExecStart=`` path is pointed at stub executables, because verify
insists the binary exists and ``/opt/meshcore/venv`` is not installed on a test machine. The parse
tests pin the notify, watchdog, restart and hardening settings, and check the units against the code
they run (entry points, exit codes, timeouts, settings the daemons read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from meshcore.agent import daemon as agent_daemon
from meshcore.agent import supervisor as agent_supervisor
from meshcore.agent.config import load_config
from meshcore.ca import CertificateAuthority
from meshcore.controlplane.daemon import parse_args as control_plane_args

from ._units import Unit, parse_bytes, parse_seconds, parse_unit

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
VENV_BIN = "/opt/meshcore/venv/bin/"
CONTROL_PLANE = "meshcore-control-plane.service"
AGENT = "meshcore-agent.service"
UNITS = (CONTROL_PLANE, AGENT)
LOW_PORTS = SYSTEMD / "meshcore-agent-low-ports.conf"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found: install Debian's systemd package (apt-get install -y systemd); "
           "`make test` installs it",
)


def unit(name: str) -> Unit:
    return parse_unit(SYSTEMD / name)


# ------------------------------------------------------------------ systemd-analyze, on the real files

def _staged(tmp_path: Path, names: tuple[str, ...], dropins: dict[str, list[Path]] | None = None) -> Path:
    """Copy the units into ``tmp_path/units`` with ExecStart= pointing at stub executables."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    for name in names:
        text = (SYSTEMD / name).read_text()
        assert VENV_BIN in text, f"{name}: ExecStart= no longer runs from {VENV_BIN}"
        for line in text.splitlines():
            if line.startswith("ExecStart=" + VENV_BIN):
                binary = stubs / line.removeprefix("ExecStart=" + VENV_BIN).split()[0]
                binary.write_text("#!/bin/sh\nexit 0\n")
                binary.chmod(0o755)
        (units / name).write_text(text.replace(VENV_BIN, f"{stubs}/"))
        for dropin in (dropins or {}).get(name, []):
            folder = units / f"{name}.d"
            folder.mkdir(exist_ok=True)
            shutil.copy(dropin, folder / dropin.name)
    return units


def _analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The trailing ':' keeps systemd's own unit path after ours, for the targets the units name.
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run([SYSTEMD_ANALYZE, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_passes_without_a_warning(tmp_path, name):
    units = _staged(tmp_path, (name,))
    result = _analyze(units, "verify", "--man=no", str(units / name))
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and bad values, only warning about them: a clean unit says nothing
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


@needs_systemd_analyze
def test_systemd_analyze_verify_passes_with_the_low_ports_dropin(tmp_path):
    units = _staged(tmp_path, (AGENT,), {AGENT: [LOW_PORTS]})
    result = _analyze(units, "verify", "--man=no", str(units / AGENT))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_verify_as_staged_here_reads_the_files_and_reports_mistakes(tmp_path):
    """The harness above must really make systemd read our files: a typo has to show up."""
    bad = tmp_path / "typo.conf"
    bad.write_text("[Service]\nProtectSytem=strict\n")
    units = _staged(tmp_path, (AGENT,), {AGENT: [bad]})
    result = _analyze(units, "verify", "--man=no", str(units / AGENT))
    assert "ProtectSytem" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_stays_low(tmp_path, name):
    """systemd's own hardening score; 2.0 (of 10) is well inside its "OK" band. Ours are 1.4 now."""
    units = _staged(tmp_path, (name,))
    result = _analyze(units, "security", "--offline=yes", "--threshold=20", "--no-pager", str(units / name))
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, "\n".join(overall) or result.stdout + result.stderr


@needs_systemd_analyze
def test_low_ports_dropin_adds_net_bind_service_and_nothing_else(tmp_path):
    def failing_checks(dropins):
        units = _staged(tmp_path / str(len(dropins)), (AGENT,), {AGENT: dropins})
        result = _analyze(units, "security", "--offline=yes", "--no-pager", str(units / AGENT))
        assert result.returncode == 0, result.stderr
        failing = set()
        for line in result.stdout.splitlines():
            fields = line.split()
            # a check that adds exposure ends with its weight: "✗ PrivateNetwork=  Service has ...  0.5"
            if len(fields) > 2 and "=" in fields[1] and _is_number(fields[-1]):
                failing.add(fields[1])
        return failing

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    without, with_dropin = failing_checks([]), failing_checks([LOW_PORTS])
    assert "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)" not in without
    assert "AmbientCapabilities=" not in without
    assert with_dropin - without == {"CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
                                     "AmbientCapabilities="}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_low_ports_dropin_sets_only_the_one_capability():
    dropin = parse_unit(LOW_PORTS)
    assert dropin.sections == {"Service": [("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                                           ("AmbientCapabilities", "CAP_NET_BIND_SERVICE")]}


# ------------------------------------------------------------------ what both units must keep

@pytest.mark.parametrize("name", UNITS)
def test_notify_watchdog_and_restart_policy(name):
    u = unit(name)
    assert u.get("Service", "Type") == "notify"  # bookworm's systemd 252 has no Type=notify-reload
    assert u.get("Service", "NotifyAccess") == "main"  # Envoy (a child) must not speak for the agent
    assert 10 <= parse_seconds(u.get("Service", "WatchdogSec")) <= 120
    # both daemons exit 0 on SIGTERM: only Restart=always brings them back after a stray kill
    assert u.get("Service", "Restart") == "always"
    assert 1 <= parse_seconds(u.get("Service", "RestartSec")) <= 10
    assert u.get("Service", "RestartPreventExitStatus") == "2"  # 2 = an operator must act first
    assert parse_seconds(u.get("Unit", "StartLimitIntervalSec")) > 0
    assert int(u.get("Unit", "StartLimitBurst")) >= 3
    assert "network-online.target" in u.get("Unit", "Wants").split()
    assert "network-online.target" in u.get("Unit", "After").split()
    assert u.get("Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", UNITS)
def test_hardening(name):
    u = unit(name)
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "ProtectProc": "invisible", "ProcSubset": "pid",
        "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "UMask": "0077", "DynamicUser": "no", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    }
    actual = {key: u.get("Service", key) for key in expected}
    assert actual == expected
    assert sorted(u.get("Service", "RestrictAddressFamilies").split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert u.all("Service", "SystemCallFilter")[0] == "@system-service"
    assert u.get("Service", "SystemCallErrorNumber") == "EPERM"
    assert parse_bytes(u.get("Service", "MemoryMax")) >= 512 * 1024**2
    assert parse_bytes(u.get("Service", "MemoryHigh")) < parse_bytes(u.get("Service", "MemoryMax"))
    assert 256 <= int(u.get("Service", "TasksMax")) <= 4096
    assert int(u.get("Service", "LimitNOFILE")) >= 65536
    assert u.get("Service", "StandardOutput") == u.get("Service", "StandardError") == "journal"
    assert u.get("Service", "StateDirectoryMode") == "0700"
    # writable: the StateDirectory= (and LogsDirectory=) only. ConfigurationDirectory= would make
    # /etc/meshcore writable under ProtectSystem=strict: the daemons must not rewrite their settings.
    assert not u.has("Service", "ConfigurationDirectory")
    assert not u.has("Service", "ReadWritePaths")
    assert u.get("Service", "User") == u.get("Service", "Group") != "root"


@pytest.mark.parametrize("name", UNITS)
def test_execstart_runs_a_console_script_of_this_project(name):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    exec_start = unit(name).get("Service", "ExecStart")
    binary = exec_start.split()[0]
    assert binary.startswith(VENV_BIN)
    assert binary.removeprefix(VENV_BIN) in scripts
    assert binary.removeprefix(VENV_BIN) == name.removesuffix(".service")


@pytest.mark.parametrize("name", UNITS)
def test_service_users_are_declared_for_sysusers(name):
    declared = {}
    for line in (SYSTEMD / "meshcore.sysusers").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "u":
            declared[fields[1]] = line.rsplit(None, 1)[-1]
    user = unit(name).get("Service", "User")
    assert user in declared
    assert declared[user] == "/var/lib/" + unit(name).get("Service", "StateDirectory")


# ------------------------------------------------------------------ the control plane

def test_control_plane_logs_json_into_its_state_directory():
    u = unit(CONTROL_PLANE)
    argv = u.get("Service", "ExecStart").split()
    args = control_plane_args(argv[1:])
    assert args.log_format == "json"
    assert args.state_dir == "/var/lib/" + u.get("Service", "StateDirectory")
    assert u.get("Service", "EnvironmentFile") == "-/etc/meshcore/control-plane.env"


def test_control_plane_has_no_reload():
    """The control plane installs no SIGHUP handler (SIGHUP would end it): no ExecReload=."""
    assert not unit(CONTROL_PLANE).has("Service", "ExecReload")


def test_control_plane_env_example_sets_only_variables_the_daemon_reads(monkeypatch):
    example = SYSTEMD / "control-plane.env.example"
    pairs = [line.split("=", 1) for line in example.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert pairs
    for key, value in pairs:
        monkeypatch.setenv(key, value)
    read = vars(control_plane_args([]))
    for key, value in pairs:
        if key.startswith("MESHCORE_"):
            option = key.removeprefix("MESHCORE_").lower()
            assert option in read, f"{example.name}: {key} is not a setting of meshcore-control-plane"
            assert read[option] == value, f"{example.name}: {key} did not reach --{option.replace('_', '-')}"
        else:
            assert key.startswith("CONSUL_"), f"{example.name}: {key} is read by nothing"


# ------------------------------------------------------------------ the agent (and Envoy, its child)

def test_agent_stops_envoy_itself_and_has_time_to():
    u = unit(AGENT)
    # SIGTERM to the agent only, which stops Envoy; process (not mixed) so that the SIGUSR2 handover
    # exit leaves Envoy running for the next agent's hot restart (supervisor.py)
    assert u.get("Service", "KillMode") == "process"
    assert u.get("Service", "RemoveIPC") == "no"  # Envoy's hot-restart shared memory outlives the agent
    assert parse_seconds(u.get("Service", "TimeoutStopSec")) > agent_supervisor.STOP_GRACE + 5
    assert u.get("Service", "OOMPolicy") == "continue"  # an OOM-killed Envoy is the agent's to restart


def test_agent_start_timeout_covers_the_wait_for_envoy():
    u = unit(AGENT)
    assert parse_seconds(u.get("Service", "TimeoutStartSec")) >= 4 * agent_daemon.ENVOY_START_WAIT


def test_agent_reload_is_sighup():
    assert unit(AGENT).get("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_agent_settings_and_state_directory_agree():
    u = unit(AGENT)
    environment = dict(item.split("=", 1) for item in u.all("Service", "Environment"))
    assert environment["MESHCORE_AGENT_STATE_DIR"] == "/var/lib/" + u.get("Service", "StateDirectory")
    assert u.get("Service", "ExecStart").split()[1:] == ["--config", "/etc/meshcore/agent.yaml"]
    assert u.get("Service", "EnvironmentFile") == "-/etc/meshcore/agent.env"
    assert u.get("Service", "LogsDirectory") == "meshcore-agent"


def test_agent_yaml_example_is_a_valid_configuration(tmp_path):
    """The example loads with the agent's own loader; its token file is where the agent may write."""
    u = unit(AGENT)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(CertificateAuthority.open(tmp_path / "ca", trust_domain="cluster.local",
                                                kek=os.urandom(32)).bundle_pem())
    services = tmp_path / "consul.d"
    services.mkdir()
    example = SYSTEMD / "agent.yaml.example"
    raw = yaml.safe_load(example.read_text())
    environment = dict(item.split("=", 1) for item in u.all("Service", "Environment"))
    # the paths of a real VM are swapped for ones that exist here; everything else is the example's
    config = load_config(["--config", str(example), "--ca-file", str(bundle),
                          "--consul-services-dir", str(services)], environment)
    assert config.node == raw["node"]
    assert config.control_plane == raw["control_plane"]
    assert config.admin == raw["admin"]
    assert config.state_dir == Path(environment["MESHCORE_AGENT_STATE_DIR"])
    # ProtectSystem=strict leaves only the state directory writable: the agent empties the token file
    assert config.join_token_file is not None and config.join_token_file.parent == config.state_dir
    commented_envoy_log = [line for line in example.read_text().splitlines() if "envoy_log:" in line]
    assert all(f"/var/log/{u.get('Service', 'LogsDirectory')}/" in line for line in commented_envoy_log)
