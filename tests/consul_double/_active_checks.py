"""TCP checks run as Consul's agent runs them (opt-in: ``ConsulDouble(run_tcp_checks=True)``).

By default the double never dials anything (active checks keep their declared status). With
``run_tcp_checks`` a thread dials every TCP check of the local agent at its ``Interval`` (Consul's
default 10s when none is set) with its ``Timeout`` (default 10s, as Consul's), and sets it ``passing``
when the connection is accepted and ``critical`` (with the dial error as output) when not, as Consul's
``CheckTCP`` does. The first run is at once after registration.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

from ._durations import parse_duration

DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 10.0


def _dial(target: str, timeout: float) -> tuple[str, str]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "passing", f"TCP connect {target}: Success"
    except (OSError, ValueError) as exc:
        return "critical", f"dial tcp {target}: {exc}"


class TcpCheckRunner:
    def __init__(self, state: Callable[[], Any]):
        self._state = state  # the double's current state (a restart may replace it)
        self._due: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="consul-double-tcp-checks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def _checks(self) -> list[tuple[str, str, float, float, str]]:
        s = self._state()
        with s.cond:
            out = []
            for cid in list(s.agent_checks):
                chk = s.checks.get((s.node, cid))
                if chk is None or chk.get("Type") != "tcp":
                    continue
                target = (chk.get("Definition") or {}).get("TCP") or ""
                interval = parse_duration(chk["Interval"]) if chk.get("Interval") else DEFAULT_INTERVAL
                timeout = parse_duration(chk["Timeout"]) if chk.get("Timeout") else DEFAULT_TIMEOUT
                out.append((cid, target, interval, timeout, chk.get("Status") or ""))
            return out

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            checks = self._checks()
            for cid in set(self._due) - {c[0] for c in checks}:
                del self._due[cid]
            for cid, target, interval, timeout, status in checks:
                if now < self._due.get(cid, 0.0) or "{port}" in target:
                    continue
                self._due[cid] = now + interval
                new, output = _dial(target, min(timeout, interval))
                if new != status:
                    try:
                        self._state().set_check_status(cid, new, output)
                    except KeyError:
                        pass  # deregistered meanwhile
