"""Agent configuration: flags > environment > YAML file > defaults; bad config exits 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshcore.agent.config import DEFAULT_ADMIN, load_config, parse_seconds
from meshcore.agent.daemon import main
from meshcore.errors import ConfigError


@pytest.fixture
def ca_file(tmp_path, ca) -> Path:
    path = tmp_path / "bundle.pem"
    path.write_text(ca.bundle_pem())
    return path


def test_flags_win_over_env_which_wins_over_file(tmp_path, ca_file):
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        f"node: from-file\ncontrol-plane: https://file:1\nca_file: {ca_file}\nrefresh_interval: 30\n"
        "admin: 127.0.0.1:19100\nlog_level: debug\n")
    env = {"MESHCORE_AGENT_NODE": "from-env", "MESHCORE_AGENT_CONTROL_PLANE": "https://env:2",
           "MESHCORE_AGENT_REFRESH_INTERVAL": "2s"}
    config = load_config(["--config", str(config_file), "--node", "from-flag"], env)
    assert config.node == "from-flag"
    assert config.control_plane == "https://env:2"
    assert config.refresh_interval == 2.0
    assert config.admin == "127.0.0.1:19100"
    assert config.log_level == "debug"
    assert config.ca_file == ca_file
    assert config.config_file == config_file


def test_defaults(ca_file):
    config = load_config(["--node", "vm1", "--control-plane", "https://cp:15443", "--ca-file", str(ca_file)], {})
    assert config.state_dir == Path("/var/lib/meshcore-agent")
    assert config.admin == DEFAULT_ADMIN
    assert config.refresh_interval == 10.0
    assert Path(config.envoy_path).name == "envoy"
    assert config.envoy_log is None and config.join_token is None and config.consul_services_dir is None
    assert config.xds_protocol == "delta"
    sotw = load_config(["--node", "vm1", "--control-plane", "https://cp:15443", "--ca-file", str(ca_file),
                        "--xds-protocol", "SotW"], {})
    assert sotw.xds_protocol == "sotw"


def test_config_file_from_env(tmp_path, ca_file):
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(f"node: vm9\ncontrol_plane: https://cp:1\nca_file: {ca_file}\n")
    assert load_config([], {"MESHCORE_AGENT_CONFIG": str(config_file)}).node == "vm9"


def test_every_problem_is_reported(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(["--node", "vm1", "--control-plane", "http://cp", "--ca-file", str(tmp_path / "none.pem"),
                     "--admin", "nowhere", "--refresh-interval", "soon", "--log-level", "loud",
                     "--xds-protocol", "rest"], {})
    text = str(info.value)
    for expected in ("must be an https://host:port URL", "none.pem does not exist", "'nowhere' is not host:port",
                     "'soon' is not a duration", "'loud' is not one of",
                     "xds_protocol: 'rest' is not one of delta, sotw"):
        assert expected in text


def test_ca_file_must_hold_certificates(tmp_path):
    bad = tmp_path / "bundle.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="is not a PEM bundle of CA certificates"):
        load_config(["--node", "vm1", "--control-plane", "https://cp:1", "--ca-file", str(bad)], {})


def test_unknown_file_setting(tmp_path, ca_file):
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("nod: vm1\n")
    with pytest.raises(ConfigError, match="unknown setting.*nod"):
        load_config(["--config", str(config_file)], {})


def test_durations():
    assert parse_seconds("10") == 10
    assert parse_seconds("2s") == 2
    assert parse_seconds("500ms") == 0.5
    assert parse_seconds("1m") == 60
    with pytest.raises(ValueError):
        parse_seconds("ten")


def test_main_exits_2_with_a_clear_message(capsys, tmp_path):
    assert main(["--node", "vm1", "--control-plane", "https://cp:1", "--ca-file", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshcore-agent: invalid agent configuration")
    assert "ca_file" in err


def test_help_explains_each_setting():
    result = subprocess.run([sys.executable, "-m", "meshcore.agent", "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    for flag in ("--node", "--control-plane", "--ca-file", "--join-token", "--join-token-file", "--state-dir",
                 "--admin", "--envoy-path", "--envoy-log", "--log-level", "--consul-services-dir",
                 "--refresh-interval", "--config"):
        assert flag in result.stdout
    assert "MESHCORE_AGENT_" in result.stdout


@pytest.mark.parametrize("node, problem", [
    ("VM1", "lowercase"), ("vm_1", "'_'"), ("vm1.example", "'.'"), ("-vm1", "must start"),
    ("vm1\nINFO x", r"'vm1\nINFO x'"),  # escaped: a line break in a name cannot forge a log line
])
def test_the_node_name_must_be_a_dns_label(ca_file, node, problem):
    """The node name becomes a SPIFFE ID segment and file names; the agent refuses a bad one at start, with the
    rule it breaks, instead of a join the CA refuses later."""
    with pytest.raises(ConfigError) as info:
        load_config([f"--node={node}", "--control-plane", "https://cp:15443", "--ca-file", str(ca_file)], {})
    (line,) = [ln for ln in str(info.value).splitlines() if "node:" in ln]
    assert problem in line and "--node" in line
