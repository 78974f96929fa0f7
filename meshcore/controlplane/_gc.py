"""The control plane's cyclic garbage collection: full collections at quiet moments, not mid-change.

A control plane with 200 connected proxies holds a few hundred thousand objects the cyclic collector
tracks (the catalog, every proxy's entries and bookkeeping). CPython's automatic full (generation 2)
collection walks all of them, 50-300 ms on a quiet 2-core machine and up to a second on a loaded one,
whenever a quarter of that heap is new since the last one: during a mesh-wide change, which allocates a
lot, that is every few changes, and whichever change it lands on is that much later.

:class:`QuietCollector` moves that work to moments when the engine has nothing to build:

* after the engine has been idle for :data:`QUIET_S`, it collects (cheap: only what is not frozen) and then
  freezes the heap (``gc.freeze``): the survivors go to the permanent generation, which automatic
  collections skip, so those that still happen during a burst walk only what the burst made;
* every :data:`FULL_EVERY_S`, at a quiet moment, it unfreezes and runs one full collection before freezing
  again, so a reference cycle among frozen objects (which freezing keeps alive) is reclaimed; if the engine
  is never quiet that long, the full collection runs anyway after :data:`FULL_AT_MOST_S`.

Only a process that runs the engine as its service does this (``MeshEngine(collect_garbage=True)``, the
control plane daemon); ``MESHCORE_GC=default`` in its environment keeps CPython's own behaviour (for
measurements against it).
"""

from __future__ import annotations

import gc
import logging
import os
import time

log = logging.getLogger("meshcore.controlplane")

QUIET_S = 0.5
"""The engine counts as quiet once no change was pending or built for this long."""
FREEZE_AFTER = 2_000
"""Objects made since the last freeze (gen 0-2, unfrozen) worth a collect-and-freeze at a quiet moment."""
FULL_EVERY_S = 600.0
"""A full collection (unfreeze, collect, freeze) at most this often, at a quiet moment..."""
FULL_AT_MOST_S = 1800.0
"""...and at the latest this long after the last one, quiet or not (frozen cycles are reclaimed)."""


def enabled_by_env() -> bool:
    return os.environ.get("MESHCORE_GC", "").strip().lower() != "default"


class QuietCollector:
    """Runs the collections described in the module docstring; :meth:`quiet` is called by the engine's
    builder when it has had nothing to do for :data:`QUIET_S` (and :meth:`due_in` says when to call it)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last_full = clock()
        self._frozen_once = False
        self.freezes = 0
        self.full_collections = 0
        self.last_pause_ms = 0.0

    def due_in(self) -> float:
        """Seconds until a full collection is due regardless of quiet (0: now)."""
        return max(self._last_full + FULL_AT_MOST_S - self._clock(), 0.0)

    def quiet(self) -> None:
        """The engine is quiet: freeze what is new, or run the periodic full collection."""
        now = self._clock()
        if now - self._last_full >= FULL_EVERY_S:
            self.full(now)
            return
        if self._frozen_once and _unfrozen() < FREEZE_AFTER:
            return
        started = time.perf_counter()
        collected = gc.collect()  # walks only what is not frozen
        gc.freeze()
        self._frozen_once = True
        self.freezes += 1
        self.last_pause_ms = (time.perf_counter() - started) * 1e3
        log.debug("gc: collected %d, froze the heap (%d objects) in %.1f ms", collected, gc.get_freeze_count(),
                  self.last_pause_ms)

    def full(self, now: float | None = None) -> None:
        """Unfreeze, collect everything, freeze again (a full pause: at a quiet moment, or when overdue)."""
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self._frozen_once = True
        self._last_full = self._clock() if now is None else now
        self.full_collections += 1
        self.last_pause_ms = (time.perf_counter() - started) * 1e3
        log.info("gc: full collection: %d unreachable, %d objects kept, %.0f ms", collected, gc.get_freeze_count(),
                 self.last_pause_ms)


def _unfrozen() -> int:
    """Objects the collector tracks outside the permanent generation (what a collection now would walk)."""
    return sum(len(gc.get_objects(generation)) for generation in range(3))


__all__ = ["QuietCollector", "enabled_by_env"]
