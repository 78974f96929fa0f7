"""Keeps one Envoy alive across the agent's exit: Envoy's parent process during a hot-restart handover.

Why: with hot restart enabled, Envoy sets ``PR_SET_PDEATHSIG(SIGTERM)`` at start (it expects a
hot-restarter wrapper to outlive every epoch), so an Envoy whose parent is the agent dies when the
agent exits, and a handover would be impossible. The agent therefore starts Envoy through this
tiny keeper: the keeper is Envoy's parent, forwards the stop signals to it and exits with its
status, and survives the agent's handover exit (it is reparented, Envoy is not signalled).

Run as a script (stdlib only, no meshcore import, so it costs little memory)::

    python -I _envoy_keeper.py --pid-fd N -- /path/to/envoy ARGS...

Envoy's pid is written to file descriptor N (decimal and a newline), then N is closed. The exit
status is Envoy's; when Envoy dies of a signal the keeper dies of the same signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--pid-fd" or argv[2] != "--":
        print("usage: _envoy_keeper.py --pid-fd N -- ENVOY [ARGS...]", file=sys.stderr)
        return 2
    pid_fd = int(argv[1])
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
        child = subprocess.Popen(argv[3:], close_fds=True)  # inherits the ignored SIGUSR2 too
    except OSError as exc:
        print(f"envoy keeper: cannot start {argv[3]}: {exc}", file=sys.stderr)
        os.close(pid_fd)
        return 127
    with os.fdopen(pid_fd, "w") as out:
        out.write(f"{child.pid}\n")
    for signum in pending:
        child.send_signal(signum)
    code = child.wait()
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
