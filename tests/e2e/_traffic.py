"""Steady traffic through the mesh for the tests that apply a fault or a rotation while it flows."""

from __future__ import annotations

import json
import threading
import time

from meshcore.demo.launcher import http_get


class SteadyTraffic:
    """Client threads calling ``url`` until stopped; counts full pages and records every failure."""

    def __init__(self, url: str, threads: int = 2):
        self.url, self.ok, self.failed = url, 0, []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.time()
            try:
                status, body = http_get(self.url, timeout=10)
                data = json.loads(body) if status == 200 else {}
                good = status == 200 and "error" not in data.get("details", {}) and "error" not in data.get("reviews", {})
                outcome = None if good else f"{status} {body[:160]!r}"
            except Exception as exc:  # every failure counts, whatever it is
                outcome = repr(exc)
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append((round(started, 3), outcome))
            self._stop.wait(0.02)

    def __enter__(self) -> SteadyTraffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def wait_for(self, requests: int, timeout: float = 60) -> None:
        """Until ``requests`` more requests have succeeded (so each phase of a test sees real traffic)."""
        with self._lock:
            goal = self.ok + requests
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.ok < goal:
            time.sleep(0.05)
        assert self.ok >= goal, f"only {self.ok} of {goal} requests succeeded in {timeout:.0f}s (failed: {self.failed[-3:]})"


__all__ = ["SteadyTraffic"]
