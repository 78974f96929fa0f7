"""The demo's own contract, as a user meets it: `meshctl demo up` on the fixed, documented addresses.

This is the one test that uses the demo's fixed ports (127.0.0.1:8080, 15000, ...); it skips, saying
so, when any of them is taken (for example by a demo the developer is running).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from meshcore.demo.launcher import http_get

FIXED = [("127.0.0.1", 8080), ("127.0.0.1", 15000), ("127.0.0.1", 15012), ("127.0.0.1", 15443),
         ("127.0.0.1", 19000), ("127.0.0.11", 21000), ("127.0.0.12", 21000), ("127.0.0.13", 21000)]


def _taken(host: str, port: int) -> bool:
    """Something listens there (a bind test would also trip over TIME_WAIT from an earlier demo)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def meshctl(*args, cwd, check=True):
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, check=check, timeout=180)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    busy = [f"{h}:{p}" for h, p in FIXED if _taken(h, p)]
    if busy:
        pytest.skip(f"the demo's fixed addresses are in use ({', '.join(busy)}); is a demo running? `meshctl demo down`")
    cwd = tmp_path_factory.mktemp("demo-cwd")
    up = meshctl("demo", "up", cwd=cwd, check=False)
    if up.returncode != 0:
        logs = cwd / ".meshcore-demo" / "logs"
        tails = "".join(f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                        for p in sorted(logs.glob("*.log"))) if logs.exists() else ""
        meshctl("demo", "down", cwd=cwd, check=False)
        pytest.fail(f"meshctl demo up failed: {up.stderr}{tails}")
    yield cwd
    meshctl("demo", "down", cwd=cwd, check=False)  # in case a test failed before test_demo_down_stops_everything


def test_productpage_through_the_gateway(demo):
    status, body = http_get("http://127.0.0.1:8080/productpage")
    assert status == 200
    assert b"details" in body.lower() and b"reviews" in body.lower()
    status, body = http_get("http://127.0.0.1:8080/productpage?format=json")
    assert status == 200 and json.loads(body)["reviews"]["version"] in ("v1", "v2", "v3")


def test_status_found_from_the_working_directory(demo):
    status = json.loads(meshctl("status", "-o", "json", cwd=demo).stdout)
    assert status["control_plane"]["http"] == "http://127.0.0.1:15000"
    assert status["control_plane"]["xds"] == "127.0.0.1:15012"
    nodes = {p["node"]: p for p in status["proxies"]}
    assert set(nodes) == {"vm1", "vm2", "vm3", "gateway"}
    assert all(p["synced"] for p in nodes.values())
    inbound = {s["id"]: s["inbound"] for p in nodes.values() for s in p["services"]}
    assert inbound["productpage-v1"] == "127.0.0.11:21000" and inbound["ratings-v1"] == "127.0.0.13:21000"
    assert nodes["vm1"]["admin"] == "127.0.0.11:19000"


def test_demo_down_stops_everything(demo):
    # Run last in this module (file order): after `down`, nothing answers and the state file is gone.
    down = meshctl("demo", "down", cwd=demo)
    assert "stopped" in down.stdout
    with pytest.raises(OSError):
        http_get("http://127.0.0.1:8080/productpage", timeout=2)
    assert not (demo / ".meshcore-demo" / "processes.json").exists()
