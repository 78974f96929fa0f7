"""The supervisor's restart logic, with a tiny ``python -c`` child standing in for Envoy (real Envoy
runs under the supervisor in test_envoy_sds.py)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from meshcore.agent.supervisor import EnvoySupervisor, envoy_command, restart_delay


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_restart_delay_is_none_for_a_first_crash_then_doubles_to_the_cap_and_resets_after_a_healthy_run():
    delays, previous = [], None
    for _ in range(8):
        previous = restart_delay(previous, ran_for=0.5)
        delays.append(previous)
    assert delays == [0, 1, 2, 4, 8, 16, 30, 30]  # the first restart at once, backoff only for a crash loop
    assert restart_delay(30, ran_for=59.9) == 30
    assert restart_delay(30, ran_for=60) == 0  # ran long enough: a new crash is a first crash again
    assert restart_delay(None, ran_for=0.0, initial=0.1, maximum=0.3) == 0
    assert restart_delay(0, ran_for=0.0, initial=0.1, maximum=0.3) == 0.1
    assert restart_delay(0.2, ran_for=0.0, initial=0.1, maximum=0.3) == 0.3


def test_envoy_command():
    argv = envoy_command("/usr/bin/envoy", Path("/s/envoy/bootstrap.json"), log_path=Path("/var/log/envoy.log"))
    assert argv == ["/usr/bin/envoy", "-c", "/s/envoy/bootstrap.json", "--disable-hot-restart",
                    "--log-level", "info", "--drain-strategy", "immediate", "--drain-time-s", "5",
                    "--file-flush-interval-msec", "1000", "--log-path", "/var/log/envoy.log"]
    assert "--log-path" not in envoy_command("envoy", Path("b.json"))


def test_restarts_a_child_that_exits_with_backoff(tmp_path):
    runs = tmp_path / "runs"
    child = f"open({str(runs)!r}, 'a').write('run\\n'); raise SystemExit(3)"
    sup = EnvoySupervisor([sys.executable, "-c", child], initial_backoff=0.05, max_backoff=0.2, reset_after=30)
    sup.start()
    try:
        _wait(lambda: sup.restarts >= 4, 20, "four restarts")
    finally:
        sup.stop()
    assert sup.last_exit_code == 3
    assert runs.read_text().count("run") == sup.starts
    assert sup.current_backoff == 0.2  # 0 -> 0.05 -> 0.1 -> 0.2 (capped)
    count = sup.starts
    time.sleep(0.5)
    assert sup.starts == count  # stopped: no more restarts


def test_a_child_that_runs_long_enough_resets_the_backoff(tmp_path):
    child = "import time; time.sleep(0.3); raise SystemExit(1)"
    sup = EnvoySupervisor([sys.executable, "-c", child], initial_backoff=0.05, max_backoff=5, reset_after=0.2)
    sup.start()
    try:
        _wait(lambda: sup.restarts >= 3, 20, "three restarts")
    finally:
        sup.stop()
    assert sup.current_backoff == 0  # every run was healthy: each crash is restarted at once


def test_stop_terminates_the_child_with_sigterm(tmp_path):
    sup = EnvoySupervisor([sys.executable, "-c", "import time; time.sleep(60)"], stop_grace=5)
    sup.start()
    _wait(lambda: sup.pid is not None, 10, "the child to start")
    code = sup.stop()
    assert code == -signal.SIGTERM
    assert sup.pid is None and sup.restarts == 0


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    ready = tmp_path / "ready"
    child = ("import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    sup = EnvoySupervisor([sys.executable, "-c", child], stop_grace=0.5)
    sup.start()
    _wait(ready.exists, 10, "the child to ignore SIGTERM")
    code = sup.stop()
    assert code == -signal.SIGKILL


def test_restart_replaces_the_child_at_once(tmp_path):
    sup = EnvoySupervisor([sys.executable, "-c", "import time; time.sleep(60)"], initial_backoff=10, stop_grace=5)
    sup.start()
    try:
        _wait(lambda: sup.pid is not None, 10, "the child to start")
        first = sup.pid
        sup.restart()
        _wait(lambda: sup.pid not in (None, first), 5, "a new child (without the 10 s backoff)")
        assert sup.starts == 2
    finally:
        sup.stop()


def test_a_missing_binary_is_retried_not_fatal(tmp_path):
    sup = EnvoySupervisor([str(tmp_path / "no-such-envoy")], initial_backoff=0.05, max_backoff=0.1)
    sup.start()
    try:
        _wait(lambda: sup.restarts >= 2, 10, "retries")
    finally:
        sup.stop()
    assert sup.starts == 0 and sup.pid is None


def test_child_does_not_inherit_systemd_notify_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("MESHCORE_TEST_MARKER", "kept")
    out = tmp_path / "env.json"
    child = (f"import json, os; open({str(out)!r} + '.tmp', 'w').write(json.dumps(dict(os.environ))); "
             f"os.replace({str(out)!r} + '.tmp', {str(out)!r})")
    sup = EnvoySupervisor([sys.executable, "-c", child], initial_backoff=5)
    sup.start()
    try:
        _wait(out.exists, 10, "the child to write its environment")
    finally:
        sup.stop()
    env = json.loads(out.read_text())
    assert env["MESHCORE_TEST_MARKER"] == "kept"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
