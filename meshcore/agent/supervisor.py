"""Runs Envoy as a child process and keeps it running.

A monitor thread starts the child, waits for it, logs its exit code and restarts it after an
exponential backoff (1 s doubling to 30 s; back to 1 s once a run lasted 60 s). Stopping sends
SIGTERM, then SIGKILL after a grace period. Certificate changes never restart Envoy (file SDS
reloads them); only a changed bootstrap does (:meth:`EnvoySupervisor.restart`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 30.0
RESET_AFTER = 60.0
STOP_GRACE = 10.0
SYSTEMD_ONLY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def envoy_command(envoy_path: str, bootstrap_path: Path, *, log_level: str = "info",
                  log_path: Path | None = None) -> list[str]:
    """The Envoy command line; everything else (node id, cluster) is in the bootstrap.

    ``--drain-strategy immediate``: when an update replaces a listener's filter chain (a policy
    changed), connections opened under the old chain are told to close at once instead of over
    Envoy's default gradual 600 s, so a new policy applies to pooled connections within a second.
    """
    argv = [envoy_path, "-c", str(bootstrap_path), "--disable-hot-restart", "--log-level", log_level,
            "--drain-strategy", "immediate", "--drain-time-s", "5",
            # Access log lines reach their file within a second (Envoy's default flush is every 10 s).
            "--file-flush-interval-msec", "1000"]
    if log_path is not None:
        argv += ["--log-path", str(log_path)]
    return argv


def restart_delay(previous: float | None, ran_for: float, *, initial: float = INITIAL_BACKOFF,
                  maximum: float = MAX_BACKOFF, reset_after: float = RESET_AFTER) -> float:
    """Delay before the next start: ``initial`` after a healthy run (or the first failure),
    otherwise double the previous delay, capped at ``maximum``."""
    if previous is None or ran_for >= reset_after:
        return min(initial, maximum)
    return min(max(previous * 2, initial), maximum)


class EnvoySupervisor:
    """Keeps one child process (Envoy) running until :meth:`stop`.

    ``argv`` is the full command line (see :func:`envoy_command`). The child's stdout/stderr go to
    the agent's own unless ``output`` is given. Thread-safe; the properties are for status reports.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "envoy",
        output: IO[bytes] | None = None,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        reset_after: float = RESET_AFTER,
        stop_grace: float = STOP_GRACE,
    ):
        self.argv = list(argv)
        self.name = name
        self._output = output
        self._initial = initial_backoff
        self._max = max_backoff
        self._reset_after = reset_after
        self.stop_grace = stop_grace
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._restart_requested = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.starts = 0
        self.last_exit_code: int | None = None
        self.current_backoff: float | None = None
        self.started_at: float | None = None

    # -- status ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def started(self) -> bool:
        return self._thread is not None

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child and the monitor thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._monitor, name=f"{self.name}-supervisor", daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and start it again at once, e.g. for a new bootstrap."""
        with self._lock:
            self._restart_requested = True
            proc = self._proc
        if proc is not None:
            self._terminate(proc)
        self._wake.set()

    def stop(self) -> int | None:
        """Stop supervising and terminate the child; returns its exit code (None if none was running)."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        self._wake.set()
        code = self._terminate(proc) if proc is not None else None
        if self._thread is not None:
            self._thread.join(timeout=self.stop_grace + 5)
        return code

    # -- internals -------------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        # Under the lock, so stop() either sees this child or prevents it from being started.
        with self._lock:
            if self._stopping.is_set():
                return None
            try:
                proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self._output,
                    stderr=self._output,
                    start_new_session=True,  # our signals (Ctrl-C in a terminal) do not hit it directly
                    close_fds=True,
                    env=child_environment(),
                )
            except OSError as exc:
                log.error("cannot start %s argv=%s: %s", self.name, self.argv[0], exc)
                return None
            self._proc = proc
        self.starts += 1
        self.started_at = time.monotonic()
        log.info("%s started pid=%s", self.name, proc.pid, extra={"pid": proc.pid})
        return proc

    def _monitor(self) -> None:
        delay: float | None = None
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = self._spawn()
            if proc is not None:
                code = proc.wait()
                self.last_exit_code = code
            else:
                code = None
            ran_for = time.monotonic() - started
            if self._stopping.is_set():
                break
            with self._lock:
                requested, self._restart_requested = self._restart_requested, False
            self.restarts += 1
            if requested:
                log.info("%s restarting for a new configuration exit_code=%s", self.name, code)
                delay = None
                continue
            delay = restart_delay(delay, ran_for, initial=self._initial, maximum=self._max,
                                  reset_after=self._reset_after)
            self.current_backoff = delay
            log.warning("%s exited exit_code=%s after %.1fs; restarting in %.1fs",
                        self.name, _describe(code), ran_for, delay,
                        extra={"exit_code": code, "backoff": delay})
            self._wake.clear()
            self._wake.wait(delay)
            with self._lock:
                self._restart_requested = False

    def _terminate(self, proc: subprocess.Popen[bytes]) -> int | None:
        if proc.poll() is not None:
            return proc.returncode
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM; sending SIGKILL pid=%s",
                        self.name, self.stop_grace, proc.pid)
            proc.kill()
            return proc.wait()
        except ProcessLookupError:
            return proc.poll()


def child_environment() -> dict[str, str]:
    """The agent's environment without systemd's notify/watchdog variables: those are the agent's."""
    return {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_VARS}


def _describe(code: int | None) -> str:
    if code is None:
        return "spawn-failed"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)

