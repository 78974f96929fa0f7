"""The agent role's ``meshcore_agent_metrics_bind`` (issue 12): rendered into agent.yaml, read by the agent.

The role's template is rendered with Jinja2 as Ansible does (its defaults file supplies every variable) and the
result loaded with the agent's own :func:`~meshcore.agent.config.load_config`: the default keeps the agent's
loopback endpoint, a production bind reaches the agent, and a bad one is refused by the agent's validation.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml

from meshcore.agent.config import load_config
from meshcore.errors import ConfigError
from tests.cli._helpers import new_ca

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "meshcore_agent"


def _render(tmp_path: Path, **overrides) -> Path:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    bundle = tmp_path / "bundle.pem"
    if not bundle.exists():
        bundle.write_text(new_ca(tmp_path / "ca").bundle_pem())
    variables = {**{k: v for k, v in defaults.items() if isinstance(v, (str, int, bool)) and "{{" not in str(v)},
                 "ansible_managed": "Ansible managed", "meshcore_agent_node": "vm1",
                 "meshcore_agent_control_plane": "https://10.0.0.5:15443", "meshcore_agent_ca_file": str(bundle),
                 "meshcore_agent_state_dir": str(tmp_path / "state"), "meshcore_agent_consul_services_dir": "",
                 **overrides}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)  # Ansible's template defaults
    out = tmp_path / "agent.yaml"
    out.write_text(env.from_string((ROLE / "templates" / "agent.yaml.j2").read_text()).render(**variables))
    return out


def test_the_default_keeps_the_agents_loopback_endpoint(tmp_path):
    config = load_config(["--config", str(_render(tmp_path))], env={})
    assert config.metrics_bind == "127.0.0.1:15090"
    assert "metrics_bind" not in yaml.safe_load(_render(tmp_path).read_text())


@pytest.mark.parametrize("bind,expected", [("0.0.0.0:15090", "0.0.0.0:15090"), ("10.0.0.7:9102", "10.0.0.7:9102"),
                                           ("off", "")])
def test_a_production_bind_reaches_the_agent(tmp_path, bind, expected):
    config = load_config(["--config", str(_render(tmp_path, meshcore_agent_metrics_bind=bind))], env={})
    assert config.metrics_bind == expected


def test_a_bad_bind_is_refused_by_the_agent(tmp_path):
    with pytest.raises(ConfigError, match="metrics_bind"):
        load_config(["--config", str(_render(tmp_path, meshcore_agent_metrics_bind="0.0.0.0"))], env={})
