"""The agent as a process (``python -m meshcore.agent``) against a real HTTPS agent API backed by the
real CA, a minimal real ADS server, and a real Envoy: join, SDS files, SVID rotation, systemd
notifications, restart without a token, control plane outages and the operator-facing exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.identity import CertSummary
from meshcore.agent.secrets import SecretsDirectory

from ._agent_api_server import AgentApiServer
from ._helpers import issue

TD = naming.DEFAULT_TRUST_DOMAIN
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str, proc: AgentProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"agent exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.log()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}" + (f"\n--- agent log\n{proc.log()}" if proc else ""))


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; collects every message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class AgentProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "meshcore.agent", *args], stdout=log, stderr=log,
                                          env=full_env, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"agent did not stop within {timeout}s of SIGTERM:\n{self.log()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _agent_args(cp: AgentApiServer, state: Path, admin: str, *extra: str) -> list[str]:
    return ["--node", "vm1", "--control-plane", cp.url, "--ca-file", str(cp.ca_file), "--state-dir", str(state),
            "--admin", admin, "--refresh-interval", "0.5s", "--log-level", "debug", *extra]


def _status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _svid_serial(state: Path, service: str) -> str | None:
    secret = SecretsDirectory(state / "secrets").read(naming.svid_secret(service))
    if secret is None:
        return None
    return CertSummary.of(secret["tls_certificate"]["certificate_chain"]["inline_string"]).serial


def test_agent_lifecycle(cp, tmp_path):
    web_id = cp.add_service("vm1", "web", "web-1")
    cp.add_service("vm1", "api", "api-1")
    state = tmp_path / "state"
    token_file = tmp_path / "join-token"
    token_file.write_text(cp.token("vm1") + "\n")
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("log_level: debug\n")
    notify = NotifySocket(tmp_path / "notify.sock")
    admin = f"127.0.0.1:{_free_port()}"
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    agent = AgentProcess(_agent_args(cp, state, admin, "--join-token-file", str(token_file), "--config",
                                     str(config_file), "--envoy-log", str(tmp_path / "envoy.log")),
                         tmp_path / "agent.log", env)
    try:
        # joined, secrets written, Envoy started, connected over mTLS with the node identity, READY sent
        _wait(lambda: "READY=1" in notify.lines(), 40, "READY=1 (Envoy /ready answering LIVE)", agent)
        assert token_file.read_text() == ""  # the token is spent
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "node.key").stat().st_mode) == 0o600
        assert naming.node_spiffe_id(TD, "vm1") in cp.ads.peers
        assert "vm1" in cp.ads.nodes
        secrets = SecretsDirectory(state / "secrets")
        assert sorted(secrets.names()) == sorted([naming.node_secret(), naming.trust_bundle_secret(TD),
                                                  naming.svid_secret("web"), naming.svid_secret("api")])
        for entry in secrets.path.iterdir():
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600
        web = secrets.read(naming.svid_secret("web"))
        assert CertSummary.of(web["tls_certificate"]["certificate_chain"]["inline_string"]).spiffe_id == web_id
        bootstrap = json.loads((state / "envoy" / "bootstrap.json").read_text())
        assert bootstrap["node"]["id"] == "vm1"
        assert bootstrap["node"]["metadata"]["secrets_dir"] == str(secrets.path)
        status = _wait(lambda: (s := _status(state)).get("envoy", {}).get("ready") and s, 10, "status.json", agent)
        envoy_pid = status["envoy"]["pid"]
        assert status["node"] == "vm1" and status["state"] == "ready"
        assert {s["name"]: s["spiffe_id"] for s in status["services"]}["web"] == web_id
        assert status["node_certificate"]["spiffe_id"] == naming.node_spiffe_id(TD, "vm1")
        assert status["control_plane"]["last_contact"] is not None

        # rotation at half-life (6 s leaves): new serials, same Envoy, and Envoy serves the new one
        first = _svid_serial(state, "web")
        _wait(lambda: _svid_serial(state, "web") not in (None, first), 15, "the web SVID to rotate", agent)
        _wait(lambda: cp.count("/v1/agent/renew-node") >= 1, 15, "the node certificate to rotate", agent)
        status = _status(state)
        assert status["envoy"]["pid"] == envoy_pid and status["envoy"]["restarts"] == 0
        # From here on, leaves that outlive a loaded machine's pauses: the restart below must find a valid
        # node certificate (with 6 s leaves a slow stop + start lets it expire, and then a token is needed).
        cp.leaf_ttl = timedelta(minutes=10)
        renewals = cp.count("/v1/agent/renew-node")
        _wait(lambda: cp.count("/v1/agent/renew-node") > renewals, 15, "a long-lived node certificate", agent)

        # a service leaving the node: its secret file goes away
        cp.services["vm1"] = [s for s in cp.services["vm1"] if s["name"] != "api"]
        _wait(lambda: not secrets.exists(naming.svid_secret("api")), 10, "the api secret to be removed", agent)

        # SIGHUP re-reads the configuration (Type=notify-reload protocol)
        agent.popen.send_signal(signal.SIGHUP)
        _wait(lambda: "configuration reloaded" in agent.log(), 10, "the reload", agent)
        assert "RELOADING=1" in notify.lines()
        assert "WATCHDOG=1" in notify.lines()
    finally:
        code = agent.stop()
    assert code == 0, agent.log()
    assert "STOPPING=1" in notify.lines()
    assert not _pid_alive(envoy_pid)
    assert _status(state)["envoy"]["pid"] is None

    # a restart (a rebooted VM) needs no token: the node certificate is still valid
    joins = cp.count("/v1/agent/join")
    notify.messages.clear()
    agent = AgentProcess(_agent_args(cp, state, admin, "--join-token-file", str(token_file)),
                         tmp_path / "agent2.log", {"NOTIFY_SOCKET": str(notify.path)})
    try:
        _wait(lambda: "READY=1" in notify.lines(), 40, "READY=1 after restart", agent)
        assert cp.count("/v1/agent/join") == joins
        assert "no join needed" in agent.log()
    finally:
        assert agent.stop() == 0
    notify.close()


def test_control_plane_outage_keeps_envoy_running(cp, tmp_path):
    # Certificates that outlive the outage: with the fixture's 6 s leaves a slow, loaded machine lets the
    # node certificate expire while the control plane is away, and then the agent rightly needs a new token.
    cp.leaf_ttl = timedelta(minutes=10)
    cp.add_service("vm1", "web")
    state = tmp_path / "state"
    admin = f"127.0.0.1:{_free_port()}"
    agent = AgentProcess(_agent_args(cp, state, admin, "--join-token", cp.token("vm1")), tmp_path / "agent.log")
    try:
        status = _wait(lambda: (s := _status(state)).get("envoy", {}).get("pid") and s.get("services") and s, 30,
                       "Envoy to run", agent)
        envoy_pid = status["envoy"]["pid"]
        port = cp.port
        cp.stop()
        _wait(lambda: _status(state).get("control_plane", {}).get("consecutive_failures", 0) >= 2, 20,
              "the agent to notice the outage", agent)
        status = _status(state)
        assert status["state"] == "degraded" and status["control_plane"]["last_error"]
        assert status["envoy"]["pid"] == envoy_pid and _pid_alive(envoy_pid)
        assert agent.popen.poll() is None
        cp.start(port=port)
        _wait(lambda: _status(state).get("control_plane", {}).get("consecutive_failures") == 0, 40,
              "the agent to reconnect", agent)
        assert _status(state)["envoy"]["pid"] == envoy_pid
        assert "control plane reachable again" in agent.log()
    finally:
        assert agent.stop() == 0


def test_expired_node_certificate_without_token_tells_the_operator(cp, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    chain, key = issue(cp.ca, naming.node_spiffe_id(TD, "vm1"), ttl=timedelta(seconds=1))
    (state / "node.crt").write_text(chain)
    (state / "node.key").write_text(key)
    time.sleep(max(0.0, (CertSummary.of(chain).not_after.timestamp() - time.time())) + 0.1)
    result = subprocess.run([sys.executable, "-m", "meshcore.agent",
                             *_agent_args(cp, state, f"127.0.0.1:{_free_port()}")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "expired" in result.stderr and "meshctl token create --node vm1" in result.stderr
    # it tried to recover first (this test server knows no /v1/agent/recover: refused), then asked for a token
    assert cp.calls == [("POST", "/v1/agent/recover", None)]
    assert "refused to recover" in result.stderr


def test_refused_join_exits_2_with_the_reason(cp, tmp_path):
    result = subprocess.run([sys.executable, "-m", "meshcore.agent",
                             *_agent_args(cp, tmp_path / "state", f"127.0.0.1:{_free_port()}", "--join-token", "bogus")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "join refused" in result.stderr and "meshctl token create --node vm1" in result.stderr
    assert not (tmp_path / "state" / "node.crt").exists()
