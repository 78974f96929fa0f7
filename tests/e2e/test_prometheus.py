"""End to end: a real Prometheus (Debian's package) scraping a test mesh through file_sd_configs.

The test writes the targets (every proxy's merged ``metrics`` URL from ``meshctl status`` and the control
plane's ``/metrics``), starts ``/usr/bin/prometheus`` on a free loopback port with its own storage, injects
10% aborts on productpage with a VirtualService and sends requests through the ingress gateway. Through
Prometheus' HTTP API, the request count on the gateway -> productpage edge must equal what the test sent and
the 5xx ratio must equal what the test saw (and be near 10%).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from meshcore.demo.launcher import http_get, wait_until

from ._topology import free_port, running_mesh

PROMETHEUS = Path("/usr/bin/prometheus")
pytestmark = pytest.mark.skipif(not PROMETHEUS.exists(),
                                reason="/usr/bin/prometheus is absent: apt-get install -y prometheus")

ABORT_10 = """apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata:
  name: productpage-abort-10
spec:
  hosts: [productpage]
  http:
  - fault:
      abort:
        httpStatus: 503
        percentage:
          value: 10
    route:
    - destination:
        host: productpage
"""
EDGE = 'source_service="ingress-gateway",destination_service="productpage"'
REQUESTS = 300


def _query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _scalar(base: str, expr: str) -> float | None:
    result = _query(base, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    state = tmp_path_factory.mktemp("prom-mesh")
    with running_mesh(state, artifacts="prometheus", agent_refresh="2s") as mesh:
        status = mesh.status()
        targets = [{"targets": [p["metrics"].split("//", 1)[1].split("/", 1)[0]], "labels": {"node": p["node"]}}
                   for p in status["proxies"] if p.get("metrics")]
        cp = status["control_plane"]["http"].split("//", 1)[1]
        prom_dir = state / "prometheus"
        (prom_dir / "data").mkdir(parents=True)
        (prom_dir / "agents.json").write_text(json.dumps(targets))
        (prom_dir / "controlplane.json").write_text(json.dumps([{"targets": [cp]}]))
        (prom_dir / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
scrape_configs:
- job_name: meshcore-agent
  file_sd_configs: [{{files: ["{prom_dir / 'agents.json'}"], refresh_interval: 5s}}]
- job_name: meshcore-control-plane
  file_sd_configs: [{{files: ["{prom_dir / 'controlplane.json'}"], refresh_interval: 5s}}]
""")
        port = free_port("127.0.0.1")
        log = open(prom_dir / "prometheus.log", "wb")
        proc = subprocess.Popen([str(PROMETHEUS), f"--config.file={prom_dir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_get(base + "/-/ready")[0] == 200, 60, "prometheus to be ready")
            yield mesh, base, len(targets)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            art = Path(__file__).resolve().parents[2] / "test-artifacts" / "prometheus"
            art.mkdir(parents=True, exist_ok=True)
            shutil.copy(prom_dir / "prometheus.log", art / "prometheus.log")


def test_every_target_is_up(world):
    _mesh, base, agents = world
    try:
        wait_until(lambda: _scalar(base, 'count(up{job="meshcore-agent"} == 1)') == agents, 60,
                   "every agent target up")
    except Exception:
        with urllib.request.urlopen(base + "/api/v1/targets", timeout=10) as resp:
            targets = json.loads(resp.read())["data"]["activeTargets"]
        pytest.fail(f"targets: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}")
    wait_until(lambda: _scalar(base, 'up{job="meshcore-control-plane"}') == 1, 30, "the control plane target up")
    assert _scalar(base, 'count(meshcore_process_resident_memory_bytes{process="envoy"})') == agents


def test_request_rate_and_error_ratio_match_generated_traffic(world):
    mesh, base, _ = world
    total = f"sum(meshcore_requests_total{{{EDGE}}})"
    errors = f'sum(meshcore_requests_total{{{EDGE},response_code_class="5xx"}})'
    wait_until(lambda: _scalar(base, total) is not None, 60, "the gateway -> productpage series in Prometheus")
    before = mesh.status()["control_plane"]["snapshot"]
    mesh._post("/v1/resources", {"files": [{"name": "abort.yaml", "content": ABORT_10}]})
    try:
        wait_until(lambda: mesh.status()["control_plane"]["snapshot"] != before, 20, "a new snapshot")
        mesh.wait_synced(60)
        time.sleep(3)  # a scrape after the last pre-traffic request
        total0, errors0 = _scalar(base, total), _scalar(base, errors) or 0.0
        failed = 0
        for _ in range(REQUESTS):
            status, _body = http_get(mesh.url)
            assert status in (200, 503), status
            failed += status == 503
        observed = failed / REQUESTS
        assert 0.04 <= observed <= 0.18, f"{failed} aborts of {REQUESTS}: the 10% fault is not in effect"

        def counted():
            return _scalar(base, total) - total0 >= REQUESTS

        wait_until(counted, 60, f"Prometheus to count the {REQUESTS} requests sent")
        seen_total = _scalar(base, total) - total0
        seen_errors = _scalar(base, errors) - errors0
        assert seen_total == REQUESTS
        assert abs(seen_errors / seen_total - observed) < 0.01, (seen_errors, seen_total, observed)
        rate = _scalar(base, f"sum(rate(meshcore_requests_total{{{EDGE}}}[1m]))")
        assert rate and rate > 0
        ratio = _scalar(base, f'sum(increase(meshcore_requests_total{{{EDGE},response_code_class="5xx"}}[5m])) / '
                              f"sum(increase(meshcore_requests_total{{{EDGE}}}[5m]))")
        assert ratio is not None and abs(ratio - observed) < 0.05, (ratio, observed)
        p99 = _scalar(base, "histogram_quantile(0.99, sum by (le) (rate(meshcore_request_duration_seconds_bucket"
                            f"{{{EDGE}}}[1m])))")
        assert p99 is not None and p99 > 0
    finally:
        mesh._post("/v1/resources/delete", {"keys": ["VirtualService/default/productpage-abort-10"]})
