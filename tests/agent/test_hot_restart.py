"""EnvoySupervisor's hot restart with a real Envoy (static bootstrap on loopback ports):
a detached Envoy is taken over with epoch+1 while a client keeps sending requests, a stale record
means a cold start, a failed hot restart falls back to a cold start, and stop() ends everything."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from meshcore.agent.config import _default_envoy_path
from meshcore.agent.supervisor import (
    INITIAL_BACKOFF,
    EnvoyRecord,
    EnvoySupervisor,
    HotRestart,
    envoy_alive,
    envoy_command,
    read_record,
    stable_base_id,
    write_record,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _bootstrap(path: Path, admin: int, listen: int) -> Path:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "test",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "test", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}]},
    }
    path.write_text(json.dumps(config))
    return path


def _get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _answers(port: int, path: str = "/", body: str = "ok") -> bool:
    try:
        return _get(port, path) == (200, body)
    except OSError:
        return False


class Client:
    """Sends requests continuously: one thread on fresh connections, one on a keep-alive connection."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._fresh, daemon=True),
                         threading.Thread(target=self._keepalive, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _record(self, status: int, body: str, how: str) -> None:
        if (status, body) == (200, "ok"):
            self.ok += 1
        else:
            self.failures.append(f"{how}: {status} {body[:80]}")

    def _fresh(self) -> None:
        while not self._stop.is_set():
            try:
                self._record(*_get(self.port), "fresh")
            except OSError as exc:
                self.failures.append(f"fresh: {exc!r}")
            time.sleep(0.01)

    def _keepalive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)  # reopens after Connection: close
        while not self._stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                self._record(response.status, response.read().decode(), "keep-alive")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"keep-alive: {exc!r}")
                conn.close()
            time.sleep(0.01)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.fixture
def envoy_setup(tmp_path):
    admin, listen = _free_port(), _free_port()
    bootstrap = _bootstrap(tmp_path / "bootstrap.json", admin, listen)
    argv = envoy_command(_default_envoy_path(), bootstrap, log_level="warning", hot_restart=True)
    hot = HotRestart(stable_base_id("vm-test", tmp_path), tmp_path / "envoy.json", parent_shutdown_s=3)
    started: list[EnvoySupervisor] = []

    def make(extra: tuple[str, ...] = ()) -> EnvoySupervisor:
        sup = EnvoySupervisor(argv + list(extra), hot_restart=hot, initial_backoff=0.2, stop_grace=5,
                              output=open(tmp_path / f"envoy{len(started)}.log", "ab"))
        started.append(sup)
        return sup

    yield make, hot, admin, listen
    for sup in started:
        if sup.pid is not None:
            os.kill(sup.pid, 9)
        if sup.parent is not None and envoy_alive(sup.parent):
            os.kill(sup.parent.pid, 9)


def test_stable_base_id():
    a = stable_base_id("vm1", Path("/var/lib/meshcore-agent"))
    assert a == stable_base_id("vm1", Path("/var/lib/meshcore-agent"))
    assert a != stable_base_id("vm2", Path("/var/lib/meshcore-agent"))
    assert a != stable_base_id("vm1", Path("/tmp/other"))
    assert 0 < a < 400_000_000  # Envoy multiplies it by 10 into a uint32


def test_envoy_command_with_hot_restart():
    argv = envoy_command("envoy", Path("b.json"), hot_restart=True)
    assert "--disable-hot-restart" not in argv
    assert "--disable-hot-restart" in envoy_command("envoy", Path("b.json"))
    assert HotRestart(7, Path("r.json"), parent_shutdown_s=10).args(2) == [
        "--base-id", "7", "--restart-epoch", "2", "--parent-shutdown-time-s", "10"]


def test_envoy_alive_checks_cmdline_and_base_id(tmp_path):
    assert not envoy_alive(EnvoyRecord(pid=os.getpid(), epoch=0, base_id=1))  # python, not envoy
    assert not envoy_alive(EnvoyRecord(pid=2 ** 22 + 12345, epoch=0, base_id=1))  # no such process
    fake = tmp_path / "proc" / "42"
    fake.mkdir(parents=True)
    (fake / "cmdline").write_bytes(b"\0".join([b"/usr/bin/envoy", b"-c", b"b.json", b"--base-id", b"770", b""]))
    (fake / "stat").write_text("42 (envoy) S 1 42")
    assert not envoy_alive(EnvoyRecord(pid=42, epoch=0, base_id=77), tmp_path / "proc")  # another base id
    (fake / "cmdline").write_bytes(b"\0".join([b"/usr/bin/envoy", b"-c", b"b.json", b"--base-id", b"77", b""]))
    assert envoy_alive(EnvoyRecord(pid=42, epoch=0, base_id=77), tmp_path / "proc")
    assert not envoy_alive(EnvoyRecord(pid=42, epoch=0, base_id=78), tmp_path / "proc")
    (fake / "stat").write_text("42 (envoy) Z 1 42")
    assert not envoy_alive(EnvoyRecord(pid=42, epoch=0, base_id=77), tmp_path / "proc")


def test_handover_keeps_serving_and_the_old_envoy_exits(envoy_setup):
    make, hot, admin, listen = envoy_setup
    first = make()
    first.start()
    _wait(lambda: _answers(listen), 30, "the first envoy to serve")
    assert read_record(hot.record_path) == EnvoyRecord(pid=first.pid, epoch=0, base_id=hot.base_id)
    client = Client(listen)
    try:
        time.sleep(0.5)
        record = first.detach()
        assert record is not None and record.handover and record.epoch == 0
        assert envoy_alive(record)  # still serving without a supervisor
        time.sleep(0.5)

        second = make()
        second.start()
        assert second.parent == record
        _wait(lambda: second.pid is not None and second.pid != record.pid, 10, "the new envoy")
        assert second.epoch == 1 and second.hot_restarts == 1
        _wait(lambda: _answers(admin, "/ready", "LIVE\n"), 30, "the new envoy's admin /ready")
        _wait(lambda: not envoy_alive(record), 30, "the old envoy to exit by itself")
        assert second.pid is not None and second.starts == 1 and second.restarts == 0
        time.sleep(1)
    finally:
        client.stop()
    assert client.failures == [], client.failures[:5]
    assert client.ok > 50
    assert read_record(hot.record_path) == EnvoyRecord(pid=second.pid, epoch=1, base_id=hot.base_id)
    pid = second.pid
    shm = Path("/dev/shm") / f"envoy_shared_memory_{hot.base_id * 10}"
    assert shm.exists()  # Envoy's hot-restart state
    second.stop()
    assert not envoy_alive(EnvoyRecord(pid=pid, epoch=1, base_id=hot.base_id))
    assert not hot.record_path.exists()
    assert not shm.exists()  # cleaned up after a stop
    assert not _answers(listen)


def test_stale_record_means_a_cold_start(envoy_setup):
    make, hot, admin, listen = envoy_setup
    write_record(hot.record_path, EnvoyRecord(pid=os.getpid(), epoch=3, base_id=hot.base_id))  # pid is not envoy
    sup = make()
    sup.start()
    assert sup.parent is None
    _wait(lambda: _answers(listen), 30, "a cold-started envoy")
    assert sup.epoch == 0 and sup.hot_restarts == 0
    assert read_record(hot.record_path) == EnvoyRecord(pid=sup.pid, epoch=0, base_id=hot.base_id)
    sup.stop()


def test_failed_hot_restart_falls_back_to_a_cold_start(envoy_setup, caplog):
    make, hot, admin, listen = envoy_setup
    first = make()
    first.start()
    _wait(lambda: _answers(listen), 30, "the first envoy")
    record = first.detach()
    assert record is not None
    # This successor looks for its parent on another domain socket: the hot restart cannot work.
    second = make(("--socket-path", f"@meshcore-test-nowhere-{os.getpid()}"))
    with caplog.at_level("INFO", logger="meshcore.agent.supervisor"):
        second.start()
        assert second.parent == record
        _wait(lambda: second.hot_restart_failures == 1, 30, "the hot restart to fail")
        _wait(lambda: not envoy_alive(record), 30, "the old envoy to be gone")
        _wait(lambda: second.epoch == 0 and _answers(listen) and second.pid is not None, 30, "a cold start")
    assert "hot restart failed" in caplog.text
    second.stop()


def test_stop_recorded_envoy_stops_a_predecessor_that_was_never_taken_over(envoy_setup):
    from meshcore.agent.supervisor import stop_recorded_envoy

    make, hot, admin, listen = envoy_setup
    first = make()
    first.start()
    _wait(lambda: _answers(listen), 30, "the first envoy")
    record = first.detach()
    assert record is not None and envoy_alive(record)
    assert stop_recorded_envoy(hot, grace=5)
    assert not envoy_alive(record) and not hot.record_path.exists()
    assert not stop_recorded_envoy(hot)  # nothing left


def test_a_killed_envoy_is_restarted_cold_and_its_exit_reported(envoy_setup):
    make, hot, admin, listen = envoy_setup
    sup = make()
    sup.start()
    _wait(lambda: _answers(listen), 30, "envoy")
    first = sup.pid
    os.kill(first, 9)  # Envoy itself, not its keeper
    _wait(lambda: sup.pid not in (None, first) and _answers(listen), 30, "envoy restarted")
    assert sup.last_exit_code == -9 and sup.restarts == 1 and sup.epoch == 0
    assert read_record(hot.record_path) == EnvoyRecord(pid=sup.pid, epoch=0, base_id=hot.base_id)
    sup.stop()


def test_a_killed_envoy_is_restarted_at_once_and_only_a_crash_loop_backs_off(tmp_path):
    """The agent's own settings (default backoffs, hot restart through the keeper) over a real Envoy:
    the first SIGKILL is answered by an immediate restart, a second one soon after by the backoff.
    (How long Envoy is gone is measured by tests/agent/measure_envoy_restart.py, not asserted here.)"""
    admin, listen = _free_port(), _free_port()
    argv = envoy_command(_default_envoy_path(), _bootstrap(tmp_path / "bootstrap.json", admin, listen),
                         log_level="warning", hot_restart=True)
    hot = HotRestart(stable_base_id("vm-crash", tmp_path), tmp_path / "envoy.json")
    sup = EnvoySupervisor(argv, hot_restart=hot, output=open(tmp_path / "envoy.log", "ab"))
    sup.start()
    try:
        _wait(lambda: _answers(listen), 30, "envoy")
        first = sup.pid
        os.kill(first, 9)
        _wait(lambda: sup.pid not in (None, first) and _answers(listen), 30, "envoy restarted")
        assert sup.restarts == 1 and sup.current_backoff == 0  # no backoff before the first restart
        second = sup.pid
        os.kill(second, 9)  # again, well within RESET_AFTER of the restart: a crash loop
        _wait(lambda: sup.restarts == 2, 30, "the second exit")
        assert sup.current_backoff == INITIAL_BACKOFF
        _wait(lambda: sup.pid not in (None, second) and _answers(listen), 30, "envoy restarted again")
    finally:
        sup.stop()
