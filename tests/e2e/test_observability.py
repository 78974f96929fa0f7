"""End to end: control plane /metrics, each VM's merged /metrics, and `meshctl graph` from real Envoys' stats.

Own mesh (the bookinfo topology of ``_topology.py`` on free ports). Traffic goes through the ingress
gateway while `meshctl graph` scrapes; then a ratings abort fault (VirtualService) shows as errors on
the reviews -> ratings edge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcore.demo.launcher import http_get, wait_until

from ._topology import NODES, running_mesh

GRAPH_WINDOW = "3s"
BOOKINFO_EDGES = {("ingress-gateway", "productpage"), ("productpage", "details"), ("productpage", "reviews"),
                  ("reviews", "ratings")}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("obs-mesh"), agent_refresh="2s") as m:
        yield m


def _env(mesh) -> dict:
    token_file = getattr(mesh, "admin_token_file", None)
    return {**os.environ, **({"MESHCORE_TOKEN_FILE": str(token_file)} if token_file and token_file.exists() else {})}


def _headers(mesh) -> dict:
    auth = getattr(mesh, "auth_headers", None)
    return auth() if auth is not None and mesh.admin_token_file.exists() else {}


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _fetch(url: str, headers: dict | None = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _status(mesh) -> dict:
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "status", "-o", "json",
                          "--server", mesh.cp_info["http"]], capture_output=True, text=True, env=_env(mesh))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _graph(mesh) -> dict[tuple[str, str], dict]:
    """`meshctl graph -o json` while requests flow through the gateway."""
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            http_get(mesh.url)

    workers = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        out = subprocess.run([sys.executable, "-m", "meshcore.cli.graph", "--direct", "-o", "json", "--window", GRAPH_WINDOW,
                              "--server", mesh.cp_info["http"]], capture_output=True, text=True, env=_env(mesh),
                             timeout=60)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert out.returncode == 0, out.stderr
    edges = json.loads(out.stdout)
    for e in edges:
        assert {"source", "destination", "rps", "error_rate", "p99_ms"} <= set(e)
    return {(e["source"], e["destination"]): e for e in edges}


def test_control_plane_metrics_have_xds_build_and_convergence_series(mesh):
    status = _status(mesh)
    fams = _families(_fetch(status["control_plane"]["http"] + "/metrics", _headers(mesh)))
    assert fams["meshcore_xds_connected_proxies"][0].value == len(NODES)
    pushes = fams["meshcore_xds_pushes"]
    for t in ("cds", "eds", "lds", "rds"):
        assert _total(pushes, "meshcore_xds_pushes_total", type=t) > 0, t
    assert _total(fams["meshcore_xds_acks"], "meshcore_xds_acks_total") > 0
    assert "meshcore_xds_nacks" in fams
    assert _total(fams["meshcore_config_build_seconds"], "meshcore_config_build_seconds_count") >= len(NODES)
    assert _total(fams["meshcore_convergence_seconds"], "meshcore_convergence_seconds_count") >= len(NODES)
    assert "meshcore_catalog_watch_errors" in fams
    expiry = fams["meshcore_certificate_expiry_timestamp_seconds"]
    ids = {s.labels["spiffe_id"] for s in expiry}
    assert "spiffe://cluster.local/ns/default/sa/ratings" in ids
    assert all(s.value > time.time() for s in expiry)
    [root] = [s for s in fams["meshcore_ca_root_expiry_timestamp_seconds"] if s.labels["role"] == "current"]
    assert root.value > time.time() + 365 * 86400


def test_each_proxy_metrics_url_serves_merged_text(mesh):
    proxies = {p["node"]: p for p in _status(mesh)["proxies"]}
    assert set(NODES) <= set(proxies)
    for node in NODES:
        url = proxies[node]["metrics"]
        assert url == f"http://{mesh.layout.metrics[node]}/metrics", (node, url)
        fams = _families(_fetch(url))
        assert fams["meshcore_envoy_up"][0].value == 1, node
        assert any(n.startswith("envoy_") for n in fams), node
        assert any(n.startswith("meshcore_agent_") for n in fams), node
        assert "envoy_cluster_upstream_cx" in fams, node  # the parser names counter families without _total


def test_graph_lists_bookinfo_edges_with_traffic_and_no_errors(mesh):
    edges = _graph(mesh)
    for edge in BOOKINFO_EDGES:
        assert edge in edges, (edge, sorted(edges))
        assert edges[edge]["rps"] > 0, edges[edge]
        assert edges[edge]["error_rate"] == 0, edges[edge]
        assert edges[edge]["p99_ms"] is not None and edges[edge]["p99_ms"] >= 0


def test_graph_shows_injected_aborts_as_errors(mesh):
    before = mesh.status()["control_plane"]["snapshot"]
    doc = ("apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: ratings-abort\n"
           "spec:\n  hosts: [ratings]\n  http:\n  - fault:\n      abort:\n        httpStatus: 503\n"
           "        percentage:\n          value: 100\n    route:\n    - destination:\n        host: ratings\n")
    mesh._post("/v1/resources", {"files": [{"name": "ratings-abort.yaml", "content": doc}]})
    try:
        wait_until(lambda: mesh.status()["control_plane"]["snapshot"] != before, 15, "a new snapshot")
        mesh.wait_synced(30)
        edges = _graph(mesh)
        ratings = edges[("reviews", "ratings")]
        assert ratings["rps"] > 0, ratings
        assert ratings["error_rate"] >= 0.95, ratings
        assert edges[("productpage", "details")]["error_rate"] == 0
    finally:
        mesh._post("/v1/resources/delete", {"keys": ["VirtualService/default/ratings-abort"]})
