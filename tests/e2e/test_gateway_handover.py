"""The ingress gateway's agent restarts with the handover signal (SIGUSR2) while a client keeps calling
productpage through the gateway on fresh and keep-alive connections: no request fails, the gateway's
Envoy is hot-restarted (new pid, epoch 1), the old one exits by itself, and the new agent supervises
the new Envoy. The real bookinfo mesh (control plane, 4 agents, real Envoys) on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from urllib.parse import urlsplit

import pytest

from meshcore.agent.supervisor import EnvoyRecord, envoy_alive, read_record

from ._topology import running_mesh


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class GatewayClient:
    """productpage through the gateway, continuously: one thread per connection style."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, f"{parts.path}?{parts.query}"
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(keepalive,), daemon=True)
                         for keepalive in (False, True)]
        for thread in self._threads:
            thread.start()

    def _run(self, keepalive: bool) -> None:
        how = "keep-alive" if keepalive else "fresh"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{how}: {response.status} {body[:100]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{how}: {exc!r}")
                conn.close()
            if not keepalive:
                conn.close()
            time.sleep(0.02)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def test_gateway_agent_handover_loses_no_request(tmp_path):
    with running_mesh(tmp_path / "mesh") as mesh:
        node_dir = mesh.state / "nodes" / "gw"
        entry = next(p for p in mesh.processes if p["name"] == "agent-gw")
        status = json.loads((node_dir / "status.json").read_text())
        old_pid = status["envoy"]["pid"]
        client = GatewayClient(mesh.url)
        try:
            _wait(lambda: client.ok >= 20, 30, "the client to get going")
            os.kill(entry["pid"], signal.SIGUSR2)
            _wait(lambda: not _pid_alive(entry["pid"]), 30, "the gateway agent to exit")
            mesh.processes.remove(entry)
            old = read_record(node_dir / "envoy" / "envoy.json")
            assert old is not None and old.handover and old.pid == old_pid
            assert envoy_alive(old), "the handover must leave the gateway's Envoy running"
            time.sleep(1)  # no agent at all for a moment: the old Envoy serves alone

            new_agent = mesh._spawn("agent-gw", entry["argv"])  # same node, state and ports: no join
            status = _wait(lambda: (s := json.loads((node_dir / "status.json").read_text()))["agent_pid"]
                           == new_agent.pid and s["envoy"]["ready"] and s, 60, "the new agent's Envoy ready")
            new_pid = status["envoy"]["pid"]
            assert new_pid != old_pid
            assert read_record(node_dir / "envoy" / "envoy.json") == EnvoyRecord(pid=new_pid, epoch=1,
                                                                              base_id=old.base_id)
            _wait(lambda: not envoy_alive(old), 60, "the old Envoy to drain and exit by itself")
            ok_at_exit = client.ok
            _wait(lambda: client.ok >= ok_at_exit + 20, 30, "requests after the old Envoy exited")
        finally:
            client.stop()
        assert client.failures == [], client.failures[:5]
        status = json.loads((node_dir / "status.json").read_text())
        assert status["envoy"]["pid"] == new_pid and status["envoy"]["restarts"] == 0
