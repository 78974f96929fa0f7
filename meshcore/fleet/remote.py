"""Running commands on hosts over SSH with Fabric, in parallel, one host's failure not stopping the others."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from meshcore.errors import RemoteError

from .inventory import Host

log = logging.getLogger(__name__)
T = TypeVar("T")




@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exited: int


class Session(Protocol):
    """What the fleet commands need from a connection to one host."""

    host: Host

    def run(self, command: str, *, timeout: float = 60) -> Result: ...


class FabricSession:
    """A :class:`Session` over a Fabric ``Connection`` (paramiko), with the inventory's SSH settings."""

    def __init__(self, host: Host, *, connect_timeout: float = 10):
        from fabric import Connection  # imported here: only the fleet commands need Fabric

        connect_kwargs: dict = {}
        if host.key_file:
            connect_kwargs["key_filename"] = host.key_file
        self.host = host
        self._conn = Connection(host.address, user=host.user, port=host.port, connect_timeout=connect_timeout,
                                connect_kwargs=connect_kwargs)
        if not host.strict_host_keys:
            # the inventory says StrictHostKeyChecking=no: do not hold the host to a key remembered earlier
            self._conn.client.get_host_keys().clear()

    def run(self, command: str, *, timeout: float = 60) -> Result:
        try:
            r = self._conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except Exception as exc:  # noqa: BLE001 - paramiko/socket/invoke errors all mean "this host failed"
            raise RemoteError(f"{self.host.name} ({self.host.user or ''}@{self.host.address}:{self.host.port}): "
                              f"{type(exc).__name__}: {exc}".replace("\n", " ")) from exc
        return Result(r.stdout, r.stderr, r.exited)

    def close(self) -> None:
        self._conn.close()


SessionFactory = Callable[[Host], Session]


def progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def for_each_host(hosts: list[Host], work: Callable[[Session], T], *, what: str,
                  factory: SessionFactory = FabricSession, parallel: int = 16,
                  report: Callable[[str], None] = progress) -> dict[str, T | RemoteError]:
    """``work(session)`` on every host in parallel; {host: result, or the RemoteError it ended with}."""
    results: dict[str, T | RemoteError] = {}
    lock = threading.Lock()

    def one(host: Host) -> None:
        session = None
        try:
            session = factory(host)
            value: T | RemoteError = work(session)
            note = "done"
        except RemoteError as exc:
            value, note = exc, f"FAILED: {exc}"
        except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the others
            value, note = RemoteError(f"{host.name}: {type(exc).__name__}: {exc}"), f"FAILED: {exc}"
        finally:
            close = getattr(session, "close", None)
            if close:
                close()
        with lock:
            results[host.name] = value
            report(f"{what}: {host.name} {note} ({len(results)}/{len(hosts)})")
        log.debug("fleet host=%s what=%s result=%s", host.name, what, note)

    report(f"{what}: {len(hosts)} host(s)")
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        list(pool.map(one, hosts))
    return {h.name: results[h.name] for h in hosts}
