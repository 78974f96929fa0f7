"""systemd's ``sd_notify`` protocol without libsystemd.

A notification is one datagram of newline-separated ``KEY=VALUE`` lines sent to the unix socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). Outside systemd
the variable is unset and every call is a cheap no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` -> the address to ``sendto``: a path, or ``b"\\0name"`` for ``@name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1\\nSTATUS=serving"``) to systemd; True when sent."""
    env = os.environ if env is None else env
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    if not (target.startswith("/") or target.startswith("@")):
        log.debug("NOTIFY_SOCKET=%s is neither a path nor an abstract socket; not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), socket_address(target))
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, in seconds.

    None when the watchdog is off, or when ``$WATCHDOG_PID`` names another process.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class SystemdNotifier:
    """The agent's messages to systemd, each one a single datagram."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self._env = dict(os.environ if env is None else env)
        self.ready_sent = False
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._env.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> bool:
        return notify("\n".join(lines), env=self._env)

    def ready(self, status: str | None = None) -> bool:
        self.ready_sent = True
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """Send ``STATUS=text`` when it differs from the last one sent."""
        if text == self._last_status:
            return False
        self._last_status = text
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """Start of a configuration reload (``Type=notify-reload``); follow with :meth:`ready`."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        return watchdog_interval(self._env)
