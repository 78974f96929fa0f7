"""End to end on state-of-the-world xDS: agents started with ``xds_protocol: sotw`` (every other e2e
mesh runs delta, the default) get their config over ``StreamAggregatedResources`` and pass traffic."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from meshcore.demo.launcher import http_get

from ._topology import NODES, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("sotw-mesh"), artifacts="e2e-sotw-logs", leaf_ttl="1h",
                      agent_refresh="2s", env={"MESHCORE_AGENT_XDS_PROTOCOL": "sotw"}) as m:
        yield m


def _metric(mesh, name: str, labels: str) -> float:
    with urllib.request.urlopen(mesh.cp_info["http"] + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_every_envoy_runs_state_of_the_world_and_serves_traffic(mesh):
    bootstraps = sorted(Path(mesh.state).rglob("bootstrap.json"))
    assert bootstraps
    for path in bootstraps:
        ads = json.loads(path.read_text())["dynamic_resources"]["ads_config"]
        assert ads["api_type"] == "GRPC", path
    proxies = {p["node"]: p for p in mesh.status()["proxies"]}
    assert set(NODES) <= set(proxies) and all(proxies[n]["synced"] for n in NODES)
    assert _metric(mesh, "meshcore_xds_streams", 'protocol="sotw"') >= len(NODES)
    assert _metric(mesh, "meshcore_xds_streams", 'protocol="delta"') == 0
    for _ in range(10):
        status, body = http_get(mesh.url)
        assert status == 200
        page = json.loads(body)
        assert "error" not in page["details"] and "error" not in page["reviews"]
