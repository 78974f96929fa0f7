"""Nothing a mesh's owner started outlives it, even when the owner is SIGKILLed.

Three layers, each covering what the one before cannot:

- **Parent-death signal**: every process the launcher starts gets ``PR_SET_PDEATHSIG(SIGTERM)``
  (:func:`die_with_parent`), so the kernel stops it the moment its owner dies, however it died.
- **Tag**: every such process carries ``<var>=<value>`` in its environment (the launcher's var is
  :data:`STATE_VAR`, its value the mesh's state directory), which its own children inherit: an agent's
  Envoy keeper and Envoy (in sessions of their own, so no process group and no parent-death signal of the
  owner reaches them) and whatever an app forks. :func:`tagged` finds them all in ``/proc``.
- **Guard**: a tiny process in a session of its own holding the read end of a pipe whose write end only
  the owner holds (:func:`start_guard`). End of file means the owner is gone (stopped or killed): the guard
  then stops every process carrying the tag (:func:`sweep`: SIGTERM, SIGKILL after each process's own
  grace, :data:`GRACE_VAR` in its environment) and exits.

Run as a script (stdlib only, no meshcore import: it starts fast and costs little memory)::

    python -I _guard.py --fd N --var NAME --value VALUE

The test suite's conftest starts one guard per pytest process with :data:`OWNER_VAR`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STATE_VAR = "MESHCORE_MESH_STATE"  # the launcher's tag: the state directory of the mesh a process belongs to
OWNER_VAR = "MESHCORE_OWNER"  # the test suite's tag: one value per pytest process
GRACE_VAR = "MESHCORE_STOP_GRACE"  # seconds a process gets between SIGTERM and SIGKILL
DEFAULT_GRACE = 10.0
GUARD = str(Path(__file__).resolve())
PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None


def _libc_prctl() -> Callable[..., int] | None:
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    return _prctl


# Run in a fresh interpreter that becomes the child: it sets the parent-death signal on itself, checks that
# the parent it was started by still lives, and execs the real program (the signal survives exec). Not a
# ``preexec_fn``: that runs Python between fork and exec, where the fork handlers of a parent with gRPC
# threads (a test process, a control plane) run too and can wedge the child before it ever execs (seen:
# a sample app that never started, its log one gRPC epoll error).
_WRAPPER = ("import ctypes, os, signal, sys; "
            "ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[1]), 0, 0, 0); "
            "os.getppid() == int(sys.argv[2]) or os.kill(os.getpid(), int(sys.argv[1])); "
            "os.execv(sys.argv[3], sys.argv[3:])")


def die_with_parent(argv: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """``argv`` wrapped so that the child receives ``sig`` when the process starting it dies (Linux; other
    systems get ``argv`` back). ``argv[0]`` must be a path (it is exec'd as is).

    The kernel sends the signal when the *thread* that forked the child ends, not the process: from any
    other thread than the main one (a worker that may end while the owner lives on) ``argv`` is returned
    unwrapped, and the guard alone stands for such a child. A parent that died before the child's prctl
    is caught by comparing the parent pid afterwards."""
    if _libc_prctl() is None or threading.current_thread() is not threading.main_thread():
        return list(argv)
    return [sys.executable, "-c", _WRAPPER, str(int(sig)), str(os.getpid()), *argv]


@dataclass(frozen=True)
class Tagged:
    """One process carrying a tag: pid, start time (pid reuse guard), its command line and its grace."""

    pid: int
    start: int
    command: str
    grace: float

    def describe(self) -> str:
        return f"{self.command} (pid {self.pid})"


def _start_time(pid: int, proc: Path) -> int | None:
    """Start time (clock ticks after boot) of a live process; None when gone or a zombie."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _command(pid: int, proc: Path) -> str:
    try:
        argv = [a.decode(errors="replace") for a in (proc / str(pid) / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    words = [Path(argv[0]).name, *argv[1:]]
    if words[0].startswith("python") and len(words) > 1:  # name the module or script, not the interpreter
        words = words[1:]
        while len(words) > 1 and words[0] in ("-I", "-m", "-u"):
            words = words[1:]
    text = " ".join(Path(words[0]).name if i == 0 else w for i, w in enumerate(words))
    return text if len(text) <= 90 else text[:87] + "..."


def tagged(var: str, value: str, proc: Path = Path("/proc"), exclude: tuple[int, ...] = ()) -> list[Tagged]:
    """Every live process (of this user: others' environments are unreadable) whose environment at start
    holds ``var=value``, oldest first."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        pid = int(entry.name)
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle not in env:
            continue
        grace = DEFAULT_GRACE
        prefix = f"{GRACE_VAR}=".encode()
        for item in env:
            if item.startswith(prefix):
                try:
                    grace = float(item[len(prefix):])
                except ValueError:
                    pass
        start = _start_time(pid, proc)
        if start is not None:
            found.append(Tagged(pid, start, _command(pid, proc), grace))
    return sorted(found, key=lambda t: (t.start, t.pid))


def alive(process: Tagged, proc: Path = Path("/proc")) -> bool:
    """True while ``process`` (the same one: pid and start time) runs; reaps it when it is our child."""
    if _start_time(process.pid, proc) != process.start:
        try:
            os.waitpid(process.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _signal(process: Tagged, sig: int) -> None:
    try:
        os.kill(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_each(processes: list[Tagged], proc: Path = Path("/proc"), rescan: Callable[[], list[Tagged]] = list,
              settle: float = 5.0) -> list[Tagged]:
    """SIGTERM each process, SIGKILL each one still running after its own grace; returns those signalled.

    ``rescan`` finds processes started meanwhile (a supervisor restarting its child while it stops):
    they get their SIGTERM and grace too, until nothing new turns up for ``settle`` seconds past the
    last deadline."""
    deadlines: dict[tuple[int, int], float] = {}
    signalled: list[Tagged] = []

    def take(batch: list[Tagged]) -> None:
        for p in batch:
            if (p.pid, p.start) not in deadlines:
                _signal(p, signal.SIGTERM)
                deadlines[(p.pid, p.start)] = time.monotonic() + p.grace
                signalled.append(p)

    take(processes)
    quiet_until = time.monotonic() + 0.5
    next_scan = 0.0
    while True:
        now = time.monotonic()
        running = [p for p in signalled if alive(p, proc)]
        for p in running:
            if now >= deadlines[(p.pid, p.start)]:
                _signal(p, signal.SIGKILL)
        before = len(signalled)
        if now >= next_scan:  # a scan reads every process's environment: a few times a second is enough
            take(rescan())
            next_scan = now + 0.2
        if len(signalled) > before:
            quiet_until = time.monotonic() + 0.5
        if not running and len(signalled) == before and now >= quiet_until:
            return signalled
        if running and now >= max(deadlines.values()) + settle:
            for p in running:  # SIGKILL cannot be ignored: only an uninterruptible sleep holds it
                _signal(p, signal.SIGKILL)
            return signalled
        time.sleep(0.05)


def sweep(var: str, value: str, proc: Path = Path("/proc"), exclude: tuple[int, ...] = ()) -> list[Tagged]:
    """Stop every process tagged ``var=value`` (each with its grace); returns what was running."""
    exclude = (*exclude, os.getpid())

    def scan() -> list[Tagged]:
        return tagged(var, value, proc, exclude)

    return stop_each(scan(), proc, rescan=scan)


def start_guard(var: str, value: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start a guard for ``var=value`` owned by this process; returns it and the pipe's write end.

    Keep the write end open for as long as this process owns the tagged processes; closing it (or
    this process dying) makes the guard sweep them. The descriptor is not inherited by children."""
    read_fd, write_fd = os.pipe()
    try:
        guard = subprocess.Popen([sys.executable, "-I", GUARD, "--fd", str(read_fd), "--var", var, "--value", value],
                                 pass_fds=(read_fd,), stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={k: v for k, v in (os.environ if env is None else env).items() if k != var})
    except OSError:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return guard, write_fd


def main(argv: list[str]) -> int:
    opts = dict(zip(argv[0::2], argv[1::2]))
    if set(opts) != {"--fd", "--var", "--value"}:
        print("usage: _guard.py --fd N --var NAME --value VALUE", file=sys.stderr)
        return 2
    fd = int(opts["--fd"])
    for sig in (signal.SIGINT, signal.SIGHUP):  # the owner's terminal is not ours
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    owner = os.getppid()
    stopped = sweep(opts["--var"], opts["--value"], exclude=(owner,))
    for p in stopped:
        print(f"meshcore guard: the owner of {opts['--var']}={opts['--value']} is gone; stopped {p.describe()}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
