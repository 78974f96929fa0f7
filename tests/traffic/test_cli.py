"""``meshctl traffic`` against a real control plane process (no proxies): what it stores, prints and refuses."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from meshcore.cli.traffic import register
from meshcore.demo.launcher import LocalMesh, MeshLayout

from ..e2e._topology import free_port, write_catalog


def _run(*args: str, server: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--server", server] if server else []
    return subprocess.run([sys.executable, "-m", "meshcore.cli.traffic", *args, *extra],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **_AUTH})


_AUTH: dict[str, str] = {}  # MESHCORE_TOKEN_FILE of the module's control plane (the operator API needs a token)


def _headers() -> dict[str, str]:
    return {"Authorization": "Bearer " + open(_AUTH["MESHCORE_TOKEN_FILE"]).read().strip()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("traffic-cp")
    write_catalog(state / "consul.d")
    layout = MeshLayout(state_dir=state, catalog_dir=state / "consul.d",
                        xds_bind=f"127.0.0.1:{free_port('127.0.0.1')}", api_bind=f"127.0.0.1:{free_port('127.0.0.1')}",
                        http_bind=f"127.0.0.1:{free_port('127.0.0.1')}", admin={}, leaf_ttl="1h")
    mesh = LocalMesh(layout)
    try:
        info = mesh.start_control_plane()
        _AUTH["MESHCORE_TOKEN_FILE"] = str(mesh.admin_token_file)
        yield info["http"]
    finally:
        mesh.down()


def _stored(server: str, kind: str) -> list[dict]:
    req = urllib.request.Request(f"{server}/v1/resources?kind={kind}", headers=_headers())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("sub", ["", "split", "route", "switch", "rollback", "show"])
def test_help(sub):
    out = _run(*([sub] if sub else []), "--help")
    assert out.returncode == 0 and "usage: meshctl traffic" in out.stdout


def test_register_adds_traffic_to_any_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("-o", "--output", default="table")
    parser = argparse.ArgumentParser(prog="meshctl")
    register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["traffic", "route", "reviews", "--header", "end-user=jason", "--to", "v2", "-o", "json"])
    assert (args.service, args.header, args.to, args.output) == ("reviews", ["end-user=jason"], "v2", "json")
    assert args.fn.__name__ == "cmd_route"


def test_dry_run_stores_nothing(server):
    out = _run("split", "reviews", "v1=90", "v2=10", "--dry-run", "-o", "json", server=server)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["dry_run"] and result["applied"] == []
    assert result["virtualService"]["spec"]["http"][0]["route"][1] == {
        "destination": {"host": "reviews", "subset": "v2"}, "weight": 10}
    assert _stored(server, "VirtualService") == []


def test_split_route_switch_rollback_store_resources(server):
    out = _run("split", "reviews", "v1=50", "v3=50", "-o", "json", server=server)
    assert out.returncode == 0, out.stderr
    applied = [a["resource"] for a in json.loads(out.stdout)["applied"]]
    assert applied == ["DestinationRule/default/reviews", "VirtualService/default/reviews"]

    out = _run("route", "reviews", "--header", "end-user=jason", "--to", "v2", server=server)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "reviews: requests with end-user=jason -> v2"
    (vs,) = _stored(server, "VirtualService")
    assert [r.get("match") for r in vs["spec"]["http"]] == [[{"headers": {"end-user": {"exact": "jason"}}}], None]
    (dr,) = _stored(server, "DestinationRule")
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v3", "v2"]

    assert _run("switch", "reviews", "--to", "v3", server=server).returncode == 0
    (vs,) = _stored(server, "VirtualService")
    assert vs["metadata"]["labels"]["traffic.mesh.io/previous"] == "v1=50,v3=50"
    assert _run("rollback", "reviews", server=server).returncode == 0
    (vs,) = _stored(server, "VirtualService")
    assert vs["spec"]["http"][-1]["route"] == [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                                               {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50}]
    out = _run("show", "reviews", server=server)
    assert "default: everything else -> v1=50,v3=50" in out.stdout and "previous: v3" in out.stdout


def test_mistakes_exit_1_with_what_to_do(server):
    out = _run("split", "reviews", "v1=90", "v2=20", server=server)
    assert out.returncode == 1 and "weights must sum to 100, got 110" in out.stderr
    out = _run("rollback", "details", server=server)
    assert out.returncode == 1 and "meshctl traffic switch details --to COLOR" in out.stderr
    out = _run("route", "reviews", "--header", "end-user", "--to", "v2", server=server)
    assert out.returncode == 2 and "expected NAME=VALUE" in out.stderr  # refused by argparse, nothing sent


def test_cross_resource_check_before_anything_is_stored(server):
    # The operator API checks the whole set the store would hold: a second VirtualService for details
    # is refused (it would be silently ignored), with the resource and field named, and nothing stored.
    def post(name):
        doc = (f"apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {{name: {name}}}\n"
               "spec: {hosts: [details], http: [{route: [{destination: {host: details}}]}]}\n")
        req = urllib.request.Request(f"{server}/v1/resources", method="POST",
                                     headers={"Content-Type": "application/json", **_headers()},
                                     data=json.dumps({"files": [{"name": "x.yaml", "content": doc}]}).encode())
        return urllib.request.urlopen(req, timeout=5).read()

    post("aa-details")
    with pytest.raises(urllib.error.HTTPError) as refused:
        post("zz-details")
    assert refused.value.code == 422
    body = json.loads(refused.value.read())
    assert "nothing applied" in body["error"]
    assert "already routed by VirtualService default/aa-details" in body["error"]
    assert [d["metadata"]["name"] for d in _stored(server, "VirtualService")
            if d["spec"]["hosts"] == ["details"]] == ["aa-details"]
    # The workflow then edits the one VirtualService there is.
    out = _run("split", "details", "v1=100", server=server)
    assert out.returncode == 0, out.stderr
