"""Private: keep a local copy of a prefix current (a blocking-query loop) and update one key with CAS."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from ..errors import ConflictError, MeshError
from ._backend import Entry, StateBackend

log = logging.getLogger("meshcore.state")

WATCH_WAIT = 30.0  # seconds one blocking query waits (Consul caps it at 10 min)
BACKOFF_MAX = 5.0
CAS_ATTEMPTS = 32  # lost races in a row before update() gives up (jittered backoff between)


class PrefixWatcher:
    """Call ``on_change(entries)`` whenever what is under ``prefix`` changes (a thread; :meth:`stop` ends it).

    The first read happens in :meth:`start`, before it returns, so the caller's copy is current from the
    start. A failed read is logged and retried with jittered backoff, then read at once (not blocked at the
    old index: a Consul restarted empty would hold the query for the whole wait)."""

    def __init__(self, backend: StateBackend, prefix: str, on_change: Callable[[list[Entry]], None], *,
                 name: str, wait: float = WATCH_WAIT, min_interval: float = 0.0):
        self.backend, self.prefix, self._on_change, self.name, self.wait = backend, prefix, on_change, name, wait
        self.min_interval = min_interval  # at least this long between two reads (a busy prefix is read whole)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.index = 0
        self.went_back = False  # the last read's index was below the one before: Consul restarted or was restored
        self._last = 0  # the index of the last successful read (kept across failures, unlike ``index``)

    def poll(self) -> None:
        """Read the prefix now and hand it over (also what the thread does after each change)."""
        entries, index = self.backend.watch(self.prefix, 0, 0)
        self.index = self._last = index
        self._on_change(entries)

    def start(self, *, first_read: bool = True) -> PrefixWatcher:
        """Read once now (``first_read``: a failure raises), then follow in a thread; without ``first_read``
        the thread makes the first read too (a backend unreachable at start is retried, not raised)."""
        if first_read:
            self.poll()
        self._thread = threading.Thread(target=self._run, name=f"state-watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                entries, index = self.backend.watch(self.prefix, self.index, self.wait)
            except MeshError as exc:
                if self._stop.is_set():
                    return
                failures += 1
                delay = min(BACKOFF_MAX, 0.2 * 2 ** failures) * random.uniform(0.5, 1.0)
                log.warning("cannot watch shared state prefix=%s at %s (%s); retrying in %.1fs",
                            self.prefix, self.backend.location, exc, delay)
                self.index = 0
                self._stop.wait(delay)
                continue
            failures = 0
            if self._stop.is_set():
                return
            if index == self.index:
                continue
            # an index that went backwards (Consul restored or restarted) is taken as it is (Consul's advice)
            self.went_back = index < self._last
            self.index = self._last = index
            try:
                self._on_change(entries)
            except Exception:  # a bad entry must not end the watch: the handler logs what it skipped
                log.exception("handling a change of shared state prefix=%s failed", self.prefix)
            if self.min_interval:
                self._stop.wait(self.min_interval)

    def stop(self) -> None:
        self._stop.set()


def update(backend: StateBackend, key: str, change: Callable[[Entry | None], bytes | None], *,
           doing: str) -> Entry | None:
    """Read ``key``, compute its new value, write it with CAS; re-read and retry when another writer won.

    ``change`` returns the new value, or None to leave the key as it is. Returns the entry written (or the one
    left). :class:`ConflictError` after :data:`CAS_ATTEMPTS` lost races."""
    for attempt in range(CAS_ATTEMPTS):
        current = backend.get(key)
        value = change(current)
        if value is None:
            return current
        if backend.put(key, value, cas=current.index if current else 0):
            return backend.get(key)
        time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.5))
    raise ConflictError(f"{doing}: {backend.location} key {key!r} kept changing under {CAS_ATTEMPTS} attempts; "
                        "another replica is writing it, try again")
