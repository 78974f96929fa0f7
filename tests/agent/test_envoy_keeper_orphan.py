"""The Envoy keeper outlives its agent for a handover, but not for good: with no agent taking its Envoy over
within the orphan grace it stops Envoy and exits; a successor that takes over (its own Envoy in the record)
keeps the old one draining instead of stopping it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcore.agent.supervisor import KEEPER
from meshcore.demo.launcher import wait_until

GRACE = 1.0

# A stand-in agent: starts the keeper as the supervisor does (own session, pid pipe), writes the record
# naming the keeper's Envoy, prints the keeper's and Envoy's pids, then sleeps until killed.
AGENT = """
import json, os, subprocess, sys, time
record, grace, envoy = sys.argv[1], sys.argv[2], sys.argv[3]
r, w = os.pipe()
keeper = subprocess.Popen([sys.executable, "-I", {keeper!r}, "--pid-fd", str(w), "--record", record,
                           "--orphan-grace", grace, "--stop-grace", "2", "--", envoy, "-c",
                           "import time; time.sleep(120)"],
                          pass_fds=(w,), start_new_session=True, stderr=open(record + ".keeper.log", "ab"))
os.close(w)
pid = int(os.read(r, 32))
with open(record, "w") as f:
    json.dump({{"pid": pid, "epoch": 0, "base_id": 4242, "handover": False}}, f)
print(keeper.pid, pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False



@pytest.fixture
def orphaned(tmp_path):
    """An agent started, then SIGKILLed: yields (record path, keeper pid, envoy pid, time of the kill)."""
    envoy = tmp_path / "bin" / "envoy"
    envoy.parent.mkdir()
    envoy.symlink_to(sys.executable)
    record = tmp_path / "envoy.json"
    agent = subprocess.Popen([sys.executable, "-c", AGENT.format(keeper=KEEPER), str(record), str(GRACE), str(envoy)],
                             stdout=subprocess.PIPE, text=True)
    keeper_pid, envoy_pid = (int(x) for x in agent.stdout.readline().split())
    agent.kill()
    agent.wait()
    killed = time.monotonic()
    try:
        yield record, keeper_pid, envoy_pid, killed
    finally:
        for pid in (envoy_pid, keeper_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_keeper_stops_envoy_when_no_agent_comes_back(orphaned):
    record, keeper_pid, envoy_pid, _ = orphaned
    wait_until(lambda: not _alive(envoy_pid) and not _alive(keeper_pid), 30, "the orphaned keeper to stop its envoy")
    assert not record.exists(), "the record naming the stopped envoy is left behind"
    log = Path(str(record) + ".keeper.log").read_text()
    assert "is gone" in log and "stopping it" in log


def test_keeper_leaves_envoy_to_drain_when_a_new_agent_took_it_over(orphaned):
    record, keeper_pid, envoy_pid, killed = orphaned
    record.write_text(json.dumps({"pid": 999_999, "epoch": 1, "base_id": 4242}))  # the successor's envoy
    log = Path(str(record) + ".keeper.log")
    wait_until(lambda: "took over" in log.read_text(), 30, "the keeper to see the successor")
    wait_until(lambda: time.monotonic() > killed + GRACE + 1.5, 10, "the orphan grace to pass")
    assert _alive(envoy_pid) and _alive(keeper_pid), "an envoy taken over by a new agent was stopped"
    assert record.exists()


def test_keeper_refuses_a_malformed_command_line():
    proc = subprocess.run([sys.executable, "-I", KEEPER, "--pid-fd", "3", "--bogus", "1", "--", "envoy"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr
