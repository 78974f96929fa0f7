"""Keeps one Envoy alive across the agent's exit: Envoy's parent process during a hot-restart handover.

Why: with hot restart enabled, Envoy sets ``PR_SET_PDEATHSIG(SIGTERM)`` at start (it expects a
hot-restarter wrapper to outlive every epoch), so an Envoy whose parent is the agent dies when the
agent exits, and a handover would be impossible. The agent therefore starts Envoy through this
tiny keeper: the keeper is Envoy's parent, forwards the stop signals to it and exits with its
status, and survives the agent's handover exit (it is reparented, Envoy is not signalled).

An agent gone for good must not leave Envoy behind, though: the keeper watches its agent (its parent
at start). When the agent is gone (the keeper was reparented) it waits ``--orphan-grace`` seconds for a
successor: an agent that hot-restarts this Envoy writes its own Envoy into the record
(``--record``, the agent's ``envoy.json``) and this Envoy drains and exits by itself, the keeper with it.
When no successor takes over within the window (the agent was SIGKILLed and nothing restarts it, the
unit was stopped with ``KillMode=process``), the keeper stops Envoy (SIGTERM, SIGKILL after
``--stop-grace``), removes the record that still names it, and exits.

Run as a script (stdlib only, no meshcore import, so it costs little memory)::

    python -I _envoy_keeper.py --pid-fd N [--record PATH --orphan-grace S --stop-grace S] -- ENVOY ARGS...

Envoy's pid is written to file descriptor N (decimal and a newline), then N is closed. The exit
status is Envoy's; when Envoy dies of a signal the keeper dies of the same signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
POLL_S = 0.5
DEFAULT_ORPHAN_GRACE = 60.0
DEFAULT_STOP_GRACE = 10.0
USAGE = "usage: _envoy_keeper.py --pid-fd N [--record PATH --orphan-grace S --stop-grace S] -- ENVOY [ARGS...]"


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    if "--" not in argv:
        return None
    cut = argv.index("--")
    head, command = argv[:cut], argv[cut + 1:]
    opts = dict(zip(head[0::2], head[1::2]))
    if len(head) % 2 or "--pid-fd" not in opts or not command or \
            not set(opts) <= {"--pid-fd", "--record", "--orphan-grace", "--stop-grace"}:
        return None
    return opts, command


def _record_pid(path: str) -> int | None:
    """The Envoy pid the agent's record names; None when there is no readable record."""
    try:
        with open(path) as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _Orphan:
    """Decides, poll by poll, when an Envoy whose agent is gone must stop."""

    def __init__(self, agent: int, record: str | None, grace: float):
        self.agent, self.record, self.grace = agent, record, grace
        self.since: float | None = None
        self.taken_over = False

    def must_stop(self, envoy_pid: int) -> bool:
        if self.taken_over or os.getppid() == self.agent:
            return False
        now = time.monotonic()
        if self.since is None:
            self.since = now
            print(f"envoy keeper: agent pid {self.agent} is gone; stopping envoy pid {envoy_pid} in "
                  f"{self.grace:.0f}s unless a new agent takes it over", file=sys.stderr, flush=True)
        named = _record_pid(self.record) if self.record else envoy_pid
        if named is not None and named != envoy_pid:  # a successor hot-restarted: this epoch drains out
            self.taken_over = True
            print(f"envoy keeper: a new agent took over (envoy pid {named}); envoy pid {envoy_pid} drains "
                  "and exits", file=sys.stderr, flush=True)
            return False
        return now - self.since >= self.grace


def _stop(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` (by pid: the main thread is the one waiting for the child)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if child.returncode is not None:
                return
            time.sleep(0.1)


def _watch(child: subprocess.Popen[bytes], orphan: _Orphan, stop_grace: float, stopped: threading.Event) -> None:
    """Every POLL_S: is the agent gone for good? Then stop Envoy (the main thread's wait returns)."""
    while child.returncode is None:
        time.sleep(POLL_S)
        if child.returncode is None and orphan.must_stop(child.pid):
            print(f"envoy keeper: no agent took envoy pid {child.pid} over within {orphan.grace:.0f}s; "
                  "stopping it", file=sys.stderr, flush=True)
            stopped.set()
            _stop(child, stop_grace)
            return


def _forget(record: str | None, envoy_pid: int) -> None:
    """Remove the agent's record and Envoy's shared memory when they are this Envoy's: nothing resumes it."""
    if not record or _record_pid(record) != envoy_pid:
        return
    try:
        with open(record) as f:
            base_id = int(json.load(f)["base_id"])
        os.unlink(record)
        os.unlink(f"/dev/shm/envoy_shared_memory_{base_id * 10}")
    except (OSError, ValueError, KeyError, TypeError):
        pass


def main(argv: list[str]) -> int:
    parsed = _options(argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    opts, command = parsed
    pid_fd = int(opts["--pid-fd"])
    record = opts.get("--record")
    orphan = _Orphan(os.getppid(), record, float(opts.get("--orphan-grace", DEFAULT_ORPHAN_GRACE)))
    stop_grace = float(opts.get("--stop-grace", DEFAULT_STOP_GRACE))
    # The handover signal is for the agent only; a `systemctl kill -s SIGUSR2` sent to the whole unit
    # must not take the keeper (and with it Envoy) down.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)
        else:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        child = subprocess.Popen(command, close_fds=True)  # inherits the ignored SIGUSR2 too
    except OSError as exc:
        print(f"envoy keeper: cannot start {command[0]}: {exc}", file=sys.stderr)
        os.close(pid_fd)
        return 127
    with os.fdopen(pid_fd, "w") as out:
        out.write(f"{child.pid}\n")
    for signum in pending:
        child.send_signal(signum)
    # Envoy's exit ends the keeper at once (a blocking wait); the watch for a vanished agent runs beside it.
    stopped_orphan = threading.Event()
    threading.Thread(target=_watch, args=(child, orphan, stop_grace, stopped_orphan), daemon=True).start()
    code = child.wait()
    if stopped_orphan.is_set():
        _forget(record, child.pid)
    if code < 0:  # die of the same signal, so the agent sees what ended Envoy
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL/SIGSTOP: no handler to reset
            pass
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
