"""A small supervisor for the control plane's background loops: a loop that dies is restarted.

Every loop catches and reports its own errors (with their source) and keeps running; this is the net
under them. :func:`supervised` runs ``target`` in a daemon thread; if it raises, the supervisor logs one
ERROR line with the thread's name and the exception summary (the traceback at DEBUG), counts the restart
in ``meshcore_thread_restarts_total{thread=...}``, waits (exponential backoff with jitter, reset after
:data:`HEALTHY_RUN_S` without a crash) and runs ``target`` again. ``target`` returning ends the thread
(loops return when the control plane stops).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import MeshError

log = logging.getLogger("meshcore.controlplane.supervisor")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0
"""A loop that ran this long before it died starts again at :data:`FIRST_BACKOFF_S`."""


@dataclass
class ThreadHealth:
    """What the supervisor knows of one loop (read by status pages)."""

    name: str
    restarts: int = 0
    last_error: str = ""
    last_error_at: float = 0.0  # epoch seconds
    alive: bool = False


@dataclass
class Supervisor:
    """Runs loops under supervision; ``on_restart(thread)`` is told of each restart (a metric)."""

    stop: threading.Event
    on_restart: Callable[[str], None] | None = None
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    threads: dict[str, ThreadHealth] = field(default_factory=dict)

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        health = self.threads.setdefault(name, ThreadHealth(name))
        thread = threading.Thread(target=self._run, args=(name, target, health), name=name, daemon=True)
        health.alive = True
        thread.start()
        return thread

    def _run(self, name: str, target: Callable[[], None], health: ThreadHealth) -> None:
        backoff = self.first_backoff_s
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    target()
                    return
                except Exception as exc:  # noqa: BLE001 - the point of a supervisor: nothing ends the loop
                    if time.monotonic() - started >= HEALTHY_RUN_S:
                        backoff = self.first_backoff_s
                    health.restarts += 1
                    health.last_error = f"{type(exc).__name__}: {exc}"
                    health.last_error_at = time.time()
                    if self.on_restart is not None:
                        try:
                            self.on_restart(name)
                        except Exception:  # noqa: BLE001 - a metric must not stop the restart
                            log.debug("counting the restart of thread=%s failed", name, exc_info=True)
                    delay = backoff * random.uniform(0.8, 1.2)
                    log.error("background thread died thread=%s error=%s: %s; restarting it in %.1fs (restart %d; "
                              "traceback at DEBUG level)", name, type(exc).__name__, exc, delay, health.restarts)
                    log.debug("traceback of thread=%s", name, exc_info=True)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    if self.stop.wait(delay):
                        return
        finally:
            health.alive = False


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: a thread outside the supervisor that dies is one ERROR line, not a bare
    traceback on stderr (the traceback goes to DEBUG)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("thread died thread=%s error=%s: %s (not supervised: what it did has stopped; report this with the "
              "DEBUG traceback)", name, args.exc_type.__name__, args.exc_value)
    if args.exc_value is not None:
        log.debug("traceback of thread=%s", name, exc_info=args.exc_value)


def install_thread_excepthook() -> None:
    """Route deaths of unsupervised threads to the log (see :func:`_log_thread_death`); idempotent."""
    threading.excepthook = _log_thread_death


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Tag an exception raised inside with what was being done (``describe_failure`` says it): an OSError
    from a ``write()`` carries no file name, so the step that failed names it."""
    try:
        yield
    except Exception as exc:
        if not getattr(exc, "meshcore_doing", ""):
            with contextlib.suppress(AttributeError, TypeError):
                exc.meshcore_doing = what  # type: ignore[attr-defined]
        raise


def describe_failure(exc: BaseException) -> str:
    """One line for a log or a status page: what was being done, the error, and the file(s) it names."""
    what = getattr(exc, "meshcore_doing", "")
    if isinstance(exc, OSError):
        files = [str(f) for f in (exc.filename, exc.filename2) if f]
        text = (exc.strerror or str(exc) or type(exc).__name__) + (f" (file {', '.join(files)})" if files else "")
    elif isinstance(exc, MeshError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return f"{what}: {text}" if what else text


__all__ = ["Supervisor", "ThreadHealth", "describe_failure", "doing", "install_thread_excepthook"]
