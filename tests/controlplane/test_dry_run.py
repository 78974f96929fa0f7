"""``POST /v1/resources/dry-run`` and ``meshctl apply --dry-run``: each proxy's change, nothing applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshcore.ca import generate_kek_file
from meshcore.catalog.files import FileCatalogSource
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.controlplane.dry_run import diff_proxy
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy

from ._api import call_api
from ..e2e._topology import write_catalog

SPLIT = """apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"""
DANGLING = """apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v7}}
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    base = tmp_path_factory.mktemp("dryrun-cp")
    write_catalog(base / "catalog")
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0"),
                         generate_kek_file(base / "kek"))
    plane.start()
    assert plane.engine.ready.wait(20)
    # what the ADS server does when an Envoy connects: the engine builds and publishes its config
    for node in ("n1", "n2"):
        plane.engine.proxy_connected(ProxyInfo(node=node, secrets_dir=f"/var/lib/meshcore/{node}/secrets"))
    plane.token = (base / "state" / "admin.token").read_text().strip()
    plane.base = base
    try:
        yield plane
    finally:
        plane.stop()


def _post(cp, path: str, body: dict):
    return call_api(cp, "POST", path, cp.token, body)


def test_diff_proxy_names_added_removed_changed_and_diffs_json(tmp_path):
    write_catalog(tmp_path / "c")
    catalog = FileCatalogSource(tmp_path / "c").poll(None, 0).catalog
    proxy = ProxyInfo(node="n1", secrets_dir="/s")
    before = build_proxy(MeshSnapshot.build(catalog), proxy)
    after = build_proxy(MeshSnapshot.build(catalog, load_documents(SPLIT, "split.yaml")), proxy)
    d = diff_proxy("n1", before, after)
    assert d["added"] == ["cluster/outbound:reviews|productpage|v1", "cluster/outbound:reviews|productpage|v2"]
    assert d["removed"] == []
    assert any(n.startswith("route/outbound:reviews:") for n in d["changed"]), d["changed"]
    assert d["diff"].startswith("--- n1 (now)\n+++ n1 (after apply)\n")
    assert "+# cluster/outbound:reviews|productpage|v2" in d["diff"] and '"weight": 90' in d["diff"]
    back = diff_proxy("n1", after, before)
    assert back["removed"] == d["added"] and back["added"] == []
    assert diff_proxy("n1", before, before) == {"added": [], "removed": [], "changed": [], "diff": ""}


def test_dry_run_shows_each_proxys_change_and_applies_nothing(cp):
    status, out = _post(cp, "/v1/resources/dry-run", {"files": [{"name": "split.yaml", "content": SPLIT}]})
    assert status == 200, out
    assert out["resources"] == [{"resource": "DestinationRule/default/reviews", "result": "created"},
                                {"resource": "VirtualService/default/reviews", "result": "created"}]
    n1, n2 = out["nodes"]["n1"], out["nodes"]["n2"]
    assert "cluster/outbound:reviews|productpage|v2" in n1["added"] and n1["problems"] == []
    assert n1["diff"]
    # n2 runs details and reviews-v2, which call ratings only: nothing of reviews' routing changes there
    assert (n2["added"], n2["removed"], n2["changed"], n2["diff"]) == ([], [], [], "")
    assert cp.store.list() == []


def test_dry_run_validates_like_apply(cp):
    status, out = _post(cp, "/v1/resources/dry-run", {"files": [{"name": "bad.yaml", "content": DANGLING}]})
    assert status == 422
    assert any("v7" in e["message"] for e in out["errors"]), out
    assert cp.store.list() == []


def test_meshctl_apply_dry_run_json_and_table(cp, tmp_path):
    f = tmp_path / "split.yaml"
    f.write_text(SPLIT)
    env = {**os.environ, "MESHCORE_TOKEN": cp.token}
    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "meshcore.cli.main", "apply", "--dry-run", "-f", str(f),
                               "--server", cp.addresses["http"], *extra], capture_output=True, text=True,
                              timeout=60, env=env)

    out = run("-o", "json")
    assert out.returncode == 0, out.stderr
    nodes = json.loads(out.stdout)
    assert set(nodes) == {"n1", "n2"}
    assert set(nodes["n1"]) >= {"added", "removed", "changed", "diff"}
    assert "cluster/outbound:reviews|productpage|v1" in nodes["n1"]["added"]
    table = run()
    assert table.returncode == 0, table.stderr
    assert "VirtualService/default/reviews created (dry run, nothing applied)" in table.stdout
    assert "n1: 2 added, 0 removed, 1 changed" in table.stdout and "n2: no change" in table.stdout
    assert "+++ n1 (after apply)" in table.stdout
    assert cp.store.list() == []
