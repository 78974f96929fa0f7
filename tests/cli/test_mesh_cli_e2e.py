"""meshctl against a running mesh with real Envoys (one mesh for the module, free ports, as tests/e2e does):
`meshctl graph --window` from the control plane's collector right after bounded traffic, run by a process
that cannot reach any Envoy admin address."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from meshcore.demo.launcher import http_get

from ..e2e._topology import running_mesh

BOOKINFO_EDGES = {("ingress-gateway", "productpage"), ("productpage", "details"), ("productpage", "reviews"),
                  ("reviews", "ratings")}
SENT = 60  # requests through the ingress gateway: each makes one productpage call, and one to details


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("cli-mesh"), collect_interval="2s") as m:
        yield m


# Runs meshctl with every TCP connection refused except to the control plane's HTTP API: whatever it
# prints was read from the control plane, not from an Envoy admin address.
_ONLY_THE_API = """
import socket, sys
allowed = (sys.argv[1], int(sys.argv[2]))
real = socket.socket.connect
def connect(self, address):
    if isinstance(address, tuple) and (address[0], address[1]) != allowed:
        raise ConnectionRefusedError(f"test: {address} is not reachable from this process")
    return real(self, address)
socket.socket.connect = connect
from meshcore.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def _isolated_meshctl(mesh, *argv: str) -> subprocess.CompletedProcess:
    server = mesh.cp_info["http"]
    host, port = server.split("//", 1)[1].rsplit(":", 1)
    return subprocess.run([sys.executable, "-c", _ONLY_THE_API, host, port, *argv, "--server", server],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file)})


def _edges(mesh) -> dict[tuple[str, str], dict]:
    out = _isolated_meshctl(mesh, "graph", "--window", "1m", "-o", "json")
    assert out.returncode == 0, out.stderr
    return {(e["source"], e["destination"]): e for e in json.loads(out.stdout)}


def test_graph_window_from_the_collector_after_bounded_traffic(mesh):
    # a rate needs two scrapes of a proxy: first the collector's baseline of every edge (each listed idle)
    deadline = time.monotonic() + 60
    while not BOOKINFO_EDGES <= set(_edges(mesh)):
        assert time.monotonic() < deadline, "the collector never listed every declared edge"
        time.sleep(0.5)
    ok = sum(1 for _ in range(SENT) if http_get(mesh.url)[0] == 200)
    assert ok == SENT
    # the collector scrapes every 2 s: wait until the traffic is in its history (Envoy's histograms, so
    # the p99, flush some seconds after the counters), then read the window
    checked = (("ingress-gateway", "productpage"), ("productpage", "details"))
    deadline = time.monotonic() + 60
    while True:
        edges = _edges(mesh)
        if all(edges.get(e, {}).get("requests", 0) >= SENT * 0.8 and edges[e]["p99_ms"] is not None
               for e in checked) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for edge in checked:
        e = edges[edge]
        assert SENT * 0.8 <= e["requests"] <= SENT * 1.25, (edge, e)
        assert e["rps"] > 0 and not e["idle"] and e["error_rate"] == 0.0 and e["p99_ms"] is not None
    table = _isolated_meshctl(mesh, "graph", "--window", "1m")
    assert table.returncode == 0 and "ingress-gateway" in table.stdout and "productpage" in table.stdout
    direct = _isolated_meshctl(mesh, "graph", "--direct", "--window", "1s")
    assert "not reachable from this process" in direct.stderr  # the old way needs the admin addresses


def test_graph_by_version_splits_reviews_by_the_instance_that_answered(mesh):
    """productpage v1 calls reviews round robin over v1, v2, v3: the versioned graph (the caller's per-endpoint
    stats, real Envoys) splits the per-service edge into the three, and they add up to it."""
    ok = sum(1 for _ in range(SENT) if http_get(mesh.url)[0] == 200)
    assert ok == SENT
    deadline = time.monotonic() + 60
    while True:
        out = _isolated_meshctl(mesh, "graph", "--by", "version", "--window", "1m", "-o", "json")
        assert out.returncode == 0, out.stderr
        split = {e["destination_version"]: e for e in json.loads(out.stdout)
                 if (e["source"], e["destination"]) == ("productpage", "reviews")}
        whole = _edges(mesh).get(("productpage", "reviews"))  # not there until the collector's next scrape
        total = sum(e["requests"] for e in split.values())
        if (whole is not None and set(split) >= {"v1", "v2", "v3"}
                and all(split[v]["requests"] > 0 for v in ("v1", "v2", "v3"))
                and total >= whole["requests"] * 0.8) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert whole is not None, "no productpage -> reviews edge in the graph within 60s"
    assert {"v1", "v2", "v3"} <= set(split), split
    for version in ("v1", "v2", "v3"):
        e = split[version]
        assert e["requests"] > 0 and e["source_version"] == "v1" and e["error_rate"] == 0.0, e
        assert e["source_datacenter"] == e["destination_datacenter"] == "dc1" and e["gateways"] == [], e
    assert whole["requests"] * 0.8 <= total <= whole["requests"] * 1.25, (total, whole)
    assert whole["paths"] and {p["destination_datacenter"] for p in whole["paths"]} == {"dc1"}, whole
    table = _isolated_meshctl(mesh, "graph", "--by", "version", "--window", "1m")
    assert table.returncode == 0 and re.search(r"productpage\s+v1\s+reviews\s+v2\s", table.stdout), table.stdout


def test_graph_refuses_a_window_longer_than_the_collector_keeps(mesh):
    out = _isolated_meshctl(mesh, "graph", "--window", "2h")  # it keeps an hour
    assert out.returncode == 1 and "longer than the control plane keeps" in out.stderr


def test_proxy_config_tables_filters_and_types(mesh):
    from ..e2e._topology import meshctl

    defs = mesh.defs
    details = defs["details-v1"]
    out = meshctl(mesh, "proxy-config", "endpoint", "n1", "--fqdn", "details").stdout
    assert f"{details['connect']['sidecar_service']['port']}" in out and "HEALTHY" in out  # the mesh port, healthy
    rows = out.splitlines()[1:]
    assert rows[0].split() == ["ENDPOINT", "STATUS", "WEIGHT", "CLUSTER"]
    assert all("details" in r for r in rows[1:]) and len(rows) > 1
    up = defs["productpage-v1"]["connect"]["sidecar_service"]["proxy"]["upstreams"][0]
    out = meshctl(mesh, "proxy-config", "listener", "n1", "--port", str(up["local_bind_port"])).stdout
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"]
    assert len(lines) >= 3 and all(str(up["local_bind_port"]) in line for line in lines[2:])
    out = meshctl(mesh, "proxy-config", "route", "n1").stdout
    assert "CLUSTER" in out and "outbound:reviews|productpage" in out
    out = meshctl(mesh, "proxy-config", "cluster", "n1", "--fqdn", "ratings").stdout
    assert "ratings" not in out.split("\n", 2)[-1] or "outbound:ratings" in out
    assert "mTLS" in meshctl(mesh, "proxy-config", "cluster", "n1", "--fqdn", "details").stdout
    everything = meshctl(mesh, "proxy-config", "all", "n1").stdout
    for header in ("DESTINATION", "VIRTUAL HOST", "CONNECT TIMEOUT", "ENDPOINT", "HOLDS"):
        assert header in everything
    bad = meshctl(mesh, "proxy-config", "clusterz", "n1", check=False)
    assert bad.returncode == 1 and "not a proxy-config type" in bad.stderr
    bad = meshctl(mesh, "proxy-config", "n1", "--type", "bogus", check=False)
    assert bad.returncode == 2
    boot = meshctl(mesh, "proxy-config", "bootstrap", "n1", "--envoy", "-o", "json").stdout
    assert json.loads(boot)["node"]["id"] == "n1"


def _walkthrough() -> list[str]:
    """The commands of README.md's "While it runs" block, in order (comments stripped)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("While it runs", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_walkthrough_runs_as_written(mesh):
    """Each README command against this mesh, in order, exits 0. What differs from the demo is substituted:
    the gateway's and control plane's free ports (MESHCORE_SERVER), node vm1 -> n1, the canary's 20s steps
    -> 5s with --min-requests 5 (the time budget of `make test`: 5s of 10 rps at 20% is 10 requests, 20s is
    the default 20 needed); a trailing `&` runs in the background until the block ends."""
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MESHCORE_SERVER": mesh.cp_info["http"], "MESHCORE_TOKEN_FILE": str(mesh.admin_token_file),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    commands = _walkthrough()
    assert any(c.startswith(".venv/bin/meshctl canary start") for c in commands)
    background = []
    try:
        for command in commands:
            line = command.replace("http://127.0.0.1:8080", mesh.gateway).replace(" vm1", " n1")
            line = line.replace("--interval 20s", "--interval 5s --min-requests 5")
            argv = shlex.split(line.rstrip("& "))
            if argv[0] == ".venv/bin/meshctl":
                argv = [sys.executable, "-m", "meshcore.cli.main", *argv[1:]]
                if "demo" in argv and "traffic" in argv:
                    argv += ["--url", mesh.gateway + "/productpage"]
            if line.endswith("&"):
                background.append((command, subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE,
                                                             stderr=subprocess.PIPE, text=True)))
                continue
            out = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-2000:])
    finally:
        for command, proc in background:
            proc.terminate()
            stdout, stderr = proc.communicate(timeout=30)
            assert proc.returncode in (0, -15), (command, stdout, stderr)
