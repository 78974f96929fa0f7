"""Runs Envoy as a child process and keeps it running.

A monitor thread starts the child, waits for it, logs its exit code and restarts it: at once after a
first crash (a healthy run, or the first start), so a killed Envoy is back as fast as it can start; a
crash again within 60 s of that is a crash loop and backs off exponentially (1 s doubling to 30 s; a run
of 60 s starts over with an immediate restart). Stopping sends
SIGTERM, then SIGKILL after a grace period. Certificate changes never restart Envoy (file SDS
reloads them); only a changed bootstrap does (:meth:`EnvoySupervisor.restart`).

Hot restart (agent upgrades without dropping a request): with a :class:`HotRestart` the child runs
with a stable ``--base-id`` and a ``--restart-epoch``, and every start is recorded in a small JSON
file (pid, epoch, base id). :meth:`EnvoySupervisor.detach` lets the agent exit while Envoy keeps
serving; the next agent finds the live Envoy through that record and starts its own with epoch+1,
which takes the listening sockets over Envoy's hot-restart domain socket while the old one drains
and exits by itself. An Envoy no agent takes over within :attr:`HotRestart.orphan_grace` (its agent was
SIGKILLed and nothing restarted it) is stopped by its keeper (see ``_envoy_keeper.py``). A stale record (no such process, or not our Envoy) means a cold start (epoch
0); a hot restart whose new Envoy exits falls back to a cold start once the old one is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from meshcore._files import atomic_write

log = logging.getLogger(__name__)

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 30.0
RESET_AFTER = 60.0
STOP_GRACE = 10.0
DRAIN_TIME_S = 5
# The old Envoy of a hot restart is told to exit this long after the new one is initialised; it
# must exceed DRAIN_TIME_S so connections the old one holds close after their last response.
PARENT_SHUTDOWN_S = 10
KEEPER = str(Path(__file__).with_name("_envoy_keeper.py"))
KEEPER_PID_WAIT = 10.0
# How long a keeper whose agent is gone waits for a new agent to take its Envoy over before it stops
# Envoy: past systemd's RestartSec plus an agent's start (join, certificates) on a loaded VM.
ORPHAN_GRACE = 60.0
# Envoy scales the base id by 10 (epochs share the range) into a uint32: stay below that.
MAX_BASE_ID = 400_000_000
SYSTEMD_ONLY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def envoy_command(envoy_path: str, bootstrap_path: Path, *, log_level: str = "info",
                  log_path: Path | None = None, hot_restart: bool = False,
                  concurrency: int | None = None) -> list[str]:
    """The Envoy command line; everything else (node id, cluster) is in the bootstrap.

    ``--drain-strategy immediate``: when an update replaces a listener's filter chain (a policy
    changed), connections opened under the old chain are told to close at once instead of over
    Envoy's default gradual 600 s, so a new policy applies to pooled connections within a second.
    ``--drain-time-s`` is also how long an old Envoy drains during a hot restart. Without
    ``hot_restart`` the line has ``--disable-hot-restart``; with it, :class:`EnvoySupervisor` adds
    ``--base-id``/``--restart-epoch``/``--parent-shutdown-time-s`` per start (see :class:`HotRestart`).
    """
    argv = [envoy_path, "-c", str(bootstrap_path)]
    if not hot_restart:
        argv.append("--disable-hot-restart")
    argv += ["--log-level", log_level,
            "--drain-strategy", "immediate", "--drain-time-s", str(DRAIN_TIME_S),
            # Access log lines reach their file within a second (Envoy's default flush is every 10 s).
            "--file-flush-interval-msec", "1000"]
    if concurrency:  # worker threads (bootstrap.envoy_concurrency); Envoy's default counts every CPU
        argv += ["--concurrency", str(concurrency)]
    if log_path is not None:
        argv += ["--log-path", str(log_path)]
    return argv


def restart_delay(previous: float | None, ran_for: float, *, initial: float = INITIAL_BACKOFF,
                  maximum: float = MAX_BACKOFF, reset_after: float = RESET_AFTER) -> float:
    """Delay before the next start: none after a healthy run (``ran_for >= reset_after``) or the first
    failure (``previous`` None): a crashed Envoy is restarted at once. A crash again before
    ``reset_after`` is a crash loop: ``initial`` after the immediate restart, then double the previous
    delay, capped at ``maximum``."""
    if previous is None or ran_for >= reset_after:
        return 0.0
    if previous <= 0:
        return min(initial, maximum)
    return min(max(previous * 2, initial), maximum)


# -- hot restart ------------------------------------------------------------------------------


def stable_base_id(node: str, state_dir: Path) -> int:
    """Envoy's ``--base-id`` for this agent: the same on every start of the same node and state
    directory (so a new agent finds its predecessor's Envoy), different for two agents on one host
    (so their shared memory and domain sockets never meet). 1..MAX_BASE_ID-1."""
    digest = hashlib.sha256(f"{node}\0{Path(state_dir).resolve()}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (MAX_BASE_ID - 1)


@dataclass(frozen=True)
class HotRestart:
    """Hot-restart settings of one agent: its base id and where its Envoy's record lives."""

    base_id: int
    record_path: Path
    parent_shutdown_s: int = PARENT_SHUTDOWN_S
    orphan_grace: float = ORPHAN_GRACE  # the keeper stops Envoy when no agent took it over in this time

    def args(self, epoch: int) -> list[str]:
        return ["--base-id", str(self.base_id), "--restart-epoch", str(epoch),
                "--parent-shutdown-time-s", str(self.parent_shutdown_s)]


@dataclass(frozen=True)
class EnvoyRecord:
    """What an agent leaves for its successor: the running Envoy's pid, epoch and base id."""

    pid: int
    epoch: int
    base_id: int
    handover: bool = False  # True when the agent exited on purpose leaving Envoy running

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "epoch": self.epoch, "base_id": self.base_id,
                           "handover": self.handover}, sort_keys=True) + "\n"


def read_record(path: Path) -> EnvoyRecord | None:
    """The record at ``path``; None when missing or unreadable (logged: a cold start follows)."""
    try:
        raw = json.loads(path.read_text())
        return EnvoyRecord(pid=int(raw["pid"]), epoch=int(raw["epoch"]), base_id=int(raw["base_id"]),
                           handover=bool(raw.get("handover", False)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring an unreadable envoy record path=%s: %s", path, exc)
        return None


def write_record(path: Path, record: EnvoyRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, record.to_json())


def remove_record(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def envoy_alive(record: EnvoyRecord, proc_root: Path = Path("/proc")) -> bool:
    """True when ``record.pid`` is a live (not zombie) Envoy started with ``--base-id record.base_id``.

    Guards against pid reuse: a recycled pid running something else, or another agent's Envoy,
    is not ours to hot-restart from.
    """
    base = proc_root / str(record.pid)
    try:
        argv = (base / "cmdline").read_bytes().split(b"\0")
        stat = (base / "stat").read_text()
    except OSError:
        return False
    if stat[stat.rfind(")") + 2:].startswith(("Z", "X")):
        return False
    args = [a.decode(errors="replace") for a in argv if a]
    if not args or "envoy" not in Path(args[0]).name:
        return False
    return any(a == "--base-id" and i + 1 < len(args) and args[i + 1] == str(record.base_id)
               for i, a in enumerate(args))


def wait_gone(record: EnvoyRecord, timeout: float, proc_root: Path = Path("/proc")) -> bool:
    """Wait up to ``timeout`` seconds for the recorded Envoy to exit; True when it has."""
    deadline = time.monotonic() + timeout
    while envoy_alive(record, proc_root):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def remove_shared_memory(base_id: int, shm_dir: Path = Path("/dev/shm")) -> None:
    """Remove the hot-restart shared memory of a stopped Envoy (Envoy leaves it behind; a cold start
    would replace it anyway). Only call when no Envoy with this base id runs any more."""
    try:
        (shm_dir / f"envoy_shared_memory_{base_id * 10}").unlink()
    except OSError:
        pass


def stop_recorded_envoy(hot: HotRestart, grace: float = STOP_GRACE) -> bool:
    """Stop the Envoy a record names if it is ours and alive (an agent stopping before it took over
    its predecessor's Envoy must not leave it running); removes the record. True if one was stopped."""
    record = read_record(hot.record_path)
    remove_record(hot.record_path)
    if record is None or record.base_id != hot.base_id or not envoy_alive(record):
        return False
    log.info("stopping the envoy left by the previous agent pid=%s epoch=%s", record.pid, record.epoch)
    _terminate_record(record, grace)
    remove_shared_memory(hot.base_id)
    return True


def _terminate_record(record: EnvoyRecord, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, an Envoy that is not our child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not envoy_alive(record):
            return
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            log.error("cannot signal the old envoy pid=%s: %s", record.pid, exc)
            return
        if wait_gone(record, wait):
            return


class EnvoySupervisor:
    """Keeps one child process (Envoy) running until :meth:`stop`.

    ``argv`` is the full command line (see :func:`envoy_command`). The child's stdout/stderr go to
    the agent's own unless ``output`` is given. Thread-safe; the properties are for status reports.
    With ``hot_restart`` (argv built with ``hot_restart=True``) each start gets ``--base-id`` and
    an epoch, is recorded, and the first start hot-restarts from a live recorded predecessor.
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
        hot_restart: HotRestart | None = None,
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
        self._envoy_pid: int | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.starts = 0
        self.last_exit_code: int | None = None
        self.current_backoff: float | None = None
        self.started_at: float | None = None
        self.hot_restart = hot_restart
        self.epoch: int | None = None  # epoch of the current child (hot restart only)
        self.parent: EnvoyRecord | None = None  # the predecessor being hot-restarted from
        self.hot_restarts = 0  # starts that took over from a live predecessor
        self.hot_restart_failures = 0

    # -- status ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running Envoy's pid (with hot restart the child is its keeper; this is Envoy's)."""
        with self._lock:
            proc, envoy_pid = self._proc, self._envoy_pid
        if proc is None or proc.poll() is not None:
            return None
        return envoy_pid if self.hot_restart is not None else proc.pid

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
        if self.hot_restart is not None:
            self.parent = self._find_predecessor(self.hot_restart)
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
        if self.hot_restart is not None:
            if self.parent is not None:  # a predecessor still draining: it must not outlive a stop
                self._terminate_pid(self.parent)
            remove_record(self.hot_restart.record_path)
            remove_shared_memory(self.hot_restart.base_id)
        return code

    def detach(self) -> EnvoyRecord | None:
        """Stop supervising but leave the child running, for a successor agent to hot-restart from.

        Records the child (pid, epoch, base id, ``handover``) and returns that record; None when no
        child runs or hot restart is off (then there is nothing to hand over: the caller stops it).
        """
        with self._lock:
            proc = self._proc
            if (self.hot_restart is None or proc is None or proc.poll() is not None or self.epoch is None
                    or self._envoy_pid is None):
                return None
            self._stopping.set()
            record = EnvoyRecord(pid=self._envoy_pid, epoch=self.epoch, base_id=self.hot_restart.base_id, handover=True)
            write_record(self.hot_restart.record_path, record)
        self._wake.set()
        log.info("%s left running for the next agent pid=%s epoch=%s base_id=%s", self.name, record.pid,
                 record.epoch, record.base_id, extra={"pid": record.pid})
        return record

    # -- internals -------------------------------------------------------------------------

    def _find_predecessor(self, hot: HotRestart) -> EnvoyRecord | None:
        record = read_record(hot.record_path)
        if record is None:
            return None
        if record.base_id == hot.base_id and envoy_alive(record):
            log.info("%s from a previous agent is running pid=%s epoch=%s base_id=%s; hot restart with epoch %s",
                     self.name, record.pid, record.epoch, record.base_id, record.epoch + 1,
                     extra={"pid": record.pid})
            return record
        log.info("%s record is stale (pid=%s base_id=%s is not a running envoy of ours); cold start",
                 self.name, record.pid, record.base_id)
        remove_record(hot.record_path)
        return None

    def _argv_for_next_start(self) -> list[str]:
        """argv plus the hot-restart flags: epoch+1 of a live predecessor, else a cold epoch 0."""
        hot = self.hot_restart
        if hot is None:
            self.epoch = None
            return list(self.argv)
        if self.parent is not None and not envoy_alive(self.parent):
            log.info("%s predecessor pid=%s exited before the hot restart; cold start", self.name, self.parent.pid)
            self.parent = None
        self.epoch = self.parent.epoch + 1 if self.parent is not None else 0
        return list(self.argv) + hot.args(self.epoch)

    def _after_exit(self, code: int | None) -> None:
        """A child ran while a predecessor lived: the hot restart failed or the new Envoy died while
        the old one drained. Envoy cannot cold-start beside it (ports, shared memory, socket), so
        wait for the predecessor to exit by itself (it drains and stops after its shutdown time),
        then make it; the next start is a cold one."""
        parent, hot = self.parent, self.hot_restart
        if parent is None or hot is None:
            return
        self.parent = None
        if not envoy_alive(parent):
            return
        self.hot_restart_failures += 1
        wait = hot.parent_shutdown_s + DRAIN_TIME_S
        log.warning("%s hot restart failed: the new envoy (epoch %s) exited exit_code=%s while the old one "
                    "pid=%s still runs; cold start once it is gone (waiting up to %ss)", self.name, self.epoch,
                    _describe(code), parent.pid, wait, extra={"pid": parent.pid})
        if not wait_gone(parent, wait):
            self._terminate_pid(parent)

    def _terminate_pid(self, record: EnvoyRecord) -> None:
        """SIGTERM (then SIGKILL) an Envoy that is not our child, e.g. a predecessor."""
        _terminate_record(record, self.stop_grace)

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        # Under the lock, so stop() either sees this child or prevents it from being started.
        with self._lock:
            if self._stopping.is_set():
                return None
            argv = self._argv_for_next_start()
            read_fd = write_fd = -1
            if self.hot_restart is not None:
                # Through the keeper: hot-restart Envoy dies with its parent (PR_SET_PDEATHSIG), and
                # its parent must outlive this agent for a handover (see _envoy_keeper.py).
                read_fd, write_fd = os.pipe()
                argv = [sys.executable, "-I", KEEPER, "--pid-fd", str(write_fd),
                        "--record", str(self.hot_restart.record_path.absolute()),
                        "--orphan-grace", str(self.hot_restart.orphan_grace), "--stop-grace", str(self.stop_grace),
                        "--", *argv]
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self._output,
                    stderr=self._output,
                    start_new_session=True,  # our signals (Ctrl-C in a terminal) do not hit it directly
                    close_fds=True,
                    pass_fds=(write_fd,) if write_fd >= 0 else (),
                    env=child_environment(),
                )
            except OSError as exc:
                log.error("cannot start %s argv=%s: %s", self.name, argv[0], exc)
                if read_fd >= 0:
                    os.close(read_fd)
                return None
            finally:
                if write_fd >= 0:
                    os.close(write_fd)
            self._proc = proc
            self._envoy_pid = _read_pid(read_fd) if read_fd >= 0 else proc.pid
            if self.hot_restart is not None and self.epoch is not None and self._envoy_pid is not None:
                write_record(self.hot_restart.record_path,
                             EnvoyRecord(pid=self._envoy_pid, epoch=self.epoch, base_id=self.hot_restart.base_id))
        self.starts += 1
        self.started_at = time.monotonic()
        pid = self._envoy_pid
        if self.parent is not None:
            self.hot_restarts += 1
            log.info("%s started pid=%s by hot restart epoch=%s from pid=%s", self.name, pid, self.epoch,
                     self.parent.pid, extra={"pid": pid})
        else:
            log.info("%s started pid=%s%s", self.name, pid,
                     f" epoch={self.epoch}" if self.epoch is not None else "", extra={"pid": pid})
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
            self._after_exit(code)
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
            log.warning("%s exited exit_code=%s after %.1fs; %s",
                        self.name, _describe(code), ran_for,
                        f"restarting in {delay:.1f}s (it crashed again within {self._reset_after:.0f}s)"
                        if delay > 0 else "restarting it now",
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
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the keeper and Envoy together
            except OSError:
                proc.kill()
            return proc.wait()
        except ProcessLookupError:
            return proc.poll()


def _read_pid(fd: int, timeout: float = KEEPER_PID_WAIT) -> int | None:
    """The pid the keeper writes to ``fd`` (closed here); None if it wrote none in time."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                break
            chunk = os.read(fd, 32)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return int(data.strip())
    except ValueError:
        log.error("envoy keeper reported no envoy pid (%r)", data[:32])
        return None


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

