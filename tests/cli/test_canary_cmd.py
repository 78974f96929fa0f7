"""``meshctl canary start|status|abort`` against a real control plane whose canary probe is a fixed function."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..controlplane.test_canary import FAILING, IDLE, OK, FixedProbe, _controller, started_control_plane


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    plane = started_control_plane(tmp_path_factory.mktemp("canary-cli-cp"))
    try:
        yield plane
    finally:
        plane.stop()


def _meshctl(cp, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args, "--server", cp.addresses["http"]],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MESHCORE_TOKEN": cp.token})


@pytest.fixture
def probe(cp):
    p = FixedProbe(OK)
    original, cp.canaries = cp.canaries, _controller(cp, p, "canaries-cli")
    yield p
    cp.canaries.stop()
    cp.canaries = original


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "canary", "start", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--max-error-rate" in out.stdout and "--no-wait" in out.stdout


def test_start_follows_until_promoted_and_exits_0(cp, probe):
    out = _meshctl(cp, "canary", "start", "reviews", "--from", "v1", "--to", "v2", "--steps", "50,100",
                   "--interval", "1s", "--max-error-rate", "1%", "--max-p99", "500ms", "--min-requests", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "canary reviews: v1 -> v2 in steps 50,100, 1s each"
    assert any(" start " in line and "0% ->  50%" in line for line in lines), out.stdout
    assert any(" advance " in line and "[100 req, 0.00% errors, p99 40.0ms]" in line for line in lines), out.stdout
    assert lines[-1].startswith("reviews: promoted")
    status = _meshctl(cp, "canary", "status", "reviews", "-o", "json")
    data = json.loads(status.stdout)
    assert (data["phase"], data["weight"], data["steps"]) == ("promoted", 100, [50, 100])
    assert [d["action"] for d in data["decisions"]] == ["start", "advance", "promote"]
    table = _meshctl(cp, "canary", "status")
    assert table.returncode == 0 and "reviews  promoted  v1" in table.stdout


def test_rolled_back_canary_exits_nonzero_with_the_reason(cp, probe):
    probe.now = FAILING
    out = _meshctl(cp, "canary", "start", "reviews", "--from", "v1", "--to", "v3", "--interval", "30s", "-o", "json")
    assert out.returncode == 1, out.stdout + out.stderr
    final = json.loads(out.stdout)
    assert final["phase"] == "failed" and "error rate 30.00%" in final["reason"]


def test_no_wait_then_abort(cp, probe):
    probe.now = IDLE
    out = _meshctl(cp, "canary", "start", "reviews", "--from", "v1", "--to", "v2", "--interval", "1h", "--no-wait")
    assert out.returncode == 0 and "meshctl canary status reviews" in out.stdout
    again = _meshctl(cp, "canary", "start", "reviews", "--to", "v2", "--no-wait")
    assert again.returncode == 1 and "already progressing" in again.stderr
    out = _meshctl(cp, "canary", "abort", "reviews")
    assert out.returncode == 0 and "all traffic back to v1" in out.stdout
    missing = _meshctl(cp, "canary", "status", "ratings")
    assert missing.returncode == 1 and "no canary for 'ratings'" in missing.stderr
