"""examples/prometheus: promtool accepts the configs, and the Consul job's relabeling turns the agent's own
registration (as the Consul double's catalog returns it) into one target per VM at the metrics endpoint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from meshcore.agent.consul_registration import AGENT_SERVICE, ConsulRegistrar, agent_service_payload
from meshcore.catalog.consul import ConsulSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")


def _promtool(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60,
                          cwd=config.parent)


@needs_promtool
def test_promtool_accepts_the_file_sd_demo_config():
    result = _promtool(EXAMPLES / "prometheus-demo.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_consul_sd_config_where_it_knows_consul_sd():
    result = _promtool(EXAMPLES / "prometheus.yml")
    if "field consul_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool is built without Consul discovery (Debian's is); the file_sd config is checked")
    assert result.returncode == 0, result.stdout + result.stderr


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _consul_sd_labels(entry: dict) -> dict[str, str]:
    """The target labels Prometheus' consul_sd makes from one /v1/catalog/service entry (documented set)."""
    address = entry.get("ServiceAddress") or entry["Address"]
    labels = {"__address__": f"{address}:{entry['ServicePort']}", "__metrics_path__": "/metrics",
              "__meta_consul_node": entry["Node"], "__meta_consul_service": entry["ServiceName"],
              "__meta_consul_service_id": entry["ServiceID"]}
    for key, value in (entry.get("ServiceMeta") or {}).items():
        labels["__meta_consul_service_metadata_" + _sanitize(key)] = value
    return labels


def _relabel(labels: dict[str, str], rules: list[dict]) -> dict[str, str]:
    """Prometheus' ``replace`` relabeling (the only action the example uses): anchored regex, ``${n}``."""
    out = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace", rule
        value = rule.get("separator", ";").join(out.get(name, "") for name in rule["source_labels"])
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if m:
            replacement = re.sub(r"\$\{(\d+)\}", r"\\\1", rule.get("replacement", "${1}"))
            out[rule["target_label"]] = m.expand(replacement)
    return out


def test_consul_job_scrapes_each_agent_once_at_its_registered_endpoint(consul_http):
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "meshcore-agent"]
    [sd] = job["consul_sd_configs"]
    assert sd["services"] == [AGENT_SERVICE]
    registrar = ConsulRegistrar(ConsulSettings.from_env(consul_http.env()))
    node = consul_http.unique("vm")
    registrar.sync([agent_service_payload(node, "127.0.0.1", 19555),
                    {"Name": consul_http.unique("web"), "Port": 8080, "Meta": {"version": "v1"}}])
    entries = requests.get(f"{consul_http.address}/v1/catalog/service/{AGENT_SERVICE}", timeout=10,
                           headers=consul_http._headers()).json()
    targets = [_relabel(_consul_sd_labels(e), job["relabel_configs"]) for e in entries
               if e["ServiceID"] == f"{AGENT_SERVICE}-{node}"]
    assert len(targets) == 1  # one target per VM, whatever else the VM registers
    [target] = targets
    assert (target["__address__"], target["__metrics_path__"]) == ("127.0.0.1:19555", "/metrics")
    assert target["node"] == node and target["instance"] == node
