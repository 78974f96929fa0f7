"""The Consul catalog source: the mesh's services, sidecars and health, via blocking queries.

How it wakes on *any* catalog or health change
----------------------------------------------
No single Consul endpoint's index covers everything the mesh needs: ``/v1/catalog/services``
moves when a service instance is registered, changed or removed; ``/v1/health/state/any`` when a
check is added, removed or changes status (a TTL check turning critical); ``/v1/catalog/nodes``
when a node joins, leaves or changes address. :meth:`ConsulCatalogSource.poll` therefore runs
one blocking query on each of the three *concurrently* (one daemon thread each, each with its
own index) and returns as soon as any of them reports a new index. It then does a full read
(nodes, service list, all checks, then ``/v1/catalog/service/<name>`` per service) and returns
the whole catalog. Blocking queries still pending from the previous poll are reused when they
wait on the same index, so a quiet mesh costs three open requests, not a growing pile.

The index handed to callers is the largest of the three endpoint indexes. Consul's raft index
is global, so any later change gets a larger index and that number is a valid index for every
endpoint; the source remembers the per-endpoint indexes behind the index it handed out.

Index handling follows Consul's blocking-query rules: an index that goes backwards (a snapshot
restore, ...) or is 0 means "reset": do a full read and start over from what it returned; an
index below 1 is used as 1, so a query never turns into a non-blocking busy loop.

Several datacenters (:mod:`._consul_datacenters`): given ``datacenters``, the source reads each one's
catalog (``?dc=<name>`` on a WAN-federated Consul, or each at its own Consul address), watches all of them
the same way (three blocking queries per datacenter) and marks every node and instance with its datacenter.
Each datacenter has its own raft index: the index handed out is then the sum of the per-datacenter
endpoint indexes (it grows whenever any of them does); an index that is not this source's means a full read.

Last known good (:mod:`._consul_hold`): a read right after an index reset that lacks instances of the
last good catalog, or one in which more than ``shrink_threshold`` of the instances vanished at once, is
suspect (Consul restarted empty, agents not re-registered yet): the missing instances are held as last
seen for up to ``hold_s`` seconds or until they re-register, with a WARNING; :meth:`health` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import consul

from ..errors import ConsulAuthError, ConsulError
from ._consul_assemble import IGNORED_SERVICES, assemble_catalog, assemble_catalog_reporting
from ._consul_calls import consul_errors
from ._consul_datacenters import DatacenterTargets, merge_datacenters, split_key, watch_key
from ._consul_hold import DEFAULT_HOLD_S, DEFAULT_SHRINK_THRESHOLD, CatalogHold, HoldMemory
from ._consul_settings import ConsulSettings
from .model import Catalog, CatalogUpdate
from .source import SourceHealth

__all__ = ["ConsulCatalogSource", "ConsulSettings", "assemble_catalog"]

log = logging.getLogger("meshcore.catalog.consul")

WATCHED = ("nodes", "services", "checks")
_SLICE = 0.25  # how often a blocked poll looks at its interrupt event
_GRACE = 0.5  # extra seconds a poll waits for Consul's answer beyond wait + jitter


@dataclass
class _Watch:
    index: int
    future: Future


def _spawn(fn: Callable[..., int], *args) -> Future:
    """Run ``fn`` in a daemon thread (a pending blocking query must never delay process exit)."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the poller, which re-raises it
            future.set_exception(exc)

    threading.Thread(target=run, name="consul-watch", daemon=True).start()
    return future


class ConsulCatalogSource:
    """A :class:`~meshcore.catalog.source.CatalogSource` reading Consul (see the module docstring)."""

    def __init__(self, settings: ConsulSettings, *, hold_s: float = DEFAULT_HOLD_S,
                 shrink_threshold: float = DEFAULT_SHRINK_THRESHOLD, clock: Callable[[], float] = time.monotonic,
                 datacenters: DatacenterTargets | None = None, hold_memory: Path | str | None = None):
        self.settings = settings
        # (datacenter, settings) read per poll; one unnamed target = the agent's own datacenter, as before
        self._targets = datacenters.targets(settings) if datacenters is not None else (("", settings),)
        self._keys = tuple(watch_key(dc, e) for dc, _ in self._targets for e in WATCHED)
        self._trust_domains = dict(datacenters.trust_domains) if datacenters is not None else {}
        memory = HoldMemory(hold_memory, where=settings.address) if hold_memory else None  # survives restarts
        self._hold = CatalogHold(hold_s, shrink_threshold, clock=clock, where=settings.address, memory=memory)
        self._local = threading.local()
        self._client_generation = 0
        self._lock = threading.Lock()
        self._indexes: dict[str, int] | None = None
        self._rejected: tuple[tuple[str, str], ...] = ()  # catalog entries left out: (where, why)
        self._combined: int | None = None
        self._catalog: Catalog | None = None
        self._watches: dict[str, _Watch] = {}
        self._closed = threading.Event()  # set by close(): a poll blocked on Consul returns at once
        self._reread = False  # the last poll failed: the next one reads at once (see poll)

    # ------------------------------------------------------------------ clients
    def _client(self, datacenter: str = "") -> consul.Consul:
        """One py-consul client per thread and datacenter (requests sessions are not shared across threads)."""
        cached: tuple[int, dict[str, consul.Consul]] | None = getattr(self._local, "clients", None)
        if cached is None or cached[0] != self._client_generation:
            cached = self._local.clients = (self._client_generation, {})
        clients = cached[1]
        if datacenter not in clients:
            clients[datacenter] = self._settings_of(datacenter).client()
        return clients[datacenter]

    def _settings_of(self, datacenter: str) -> ConsulSettings:
        return next(s for dc, s in self._targets if dc == datacenter)

    def _combine(self, indexes: dict[str, int]) -> int:
        """The one index handed to callers: the largest (one raft index), or the sum over datacenters."""
        return max(indexes.values()) if len(self._targets) == 1 else sum(indexes.values())

    def _forget_clients(self) -> None:
        """After a 403, build new clients so a rotated CONSUL_HTTP_TOKEN_FILE is re-read."""
        self._client_generation += 1

    # ------------------------------------------------------------------ reads
    def _read(self, doing: str, fn: Callable[[consul.Consul], tuple[Any, Any]], datacenter: str = "") -> tuple[int, Any]:
        """``fn``'s (index, data) on a client; data is Consul's decoded JSON (py-consul returns it untyped)."""
        if datacenter:
            doing += f" in datacenter {datacenter}"
        try:
            with consul_errors(self._settings_of(datacenter), doing):
                idx, data = fn(self._client(datacenter))
        except ConsulAuthError:
            self._forget_clients()
            raise
        return int(idx), data

    def read_catalog(self) -> tuple[Catalog, dict[str, int]]:
        """One full, non-blocking read of the catalog (of every datacenter); returns it and the per-endpoint
        indexes (keys ``nodes``/``services``/``checks``, prefixed ``<dc>/`` when several datacenters are read)."""
        parts: list[tuple[str, Catalog, tuple[tuple[str, str], ...]]] = []
        indexes: dict[str, int] = {}
        for dc, _ in self._targets:
            try:
                catalog, rejected, found = self._read_datacenter(dc)
            except ConsulError as exc:
                if dc and "No path to datacenter" in str(exc):
                    raise ConsulError(self._unknown_datacenter(dc)) from exc
                raise
            parts.append((dc, catalog, rejected))
            indexes.update((watch_key(dc, e), i) for e, i in found.items())
        if len(parts) == 1 and not self._trust_domains:
            catalog, rejected = parts[0][1], parts[0][2]
        else:
            catalog, rejected = merge_datacenters(parts, self._trust_domains)
        self._note_rejected(rejected)
        return catalog, indexes

    def _unknown_datacenter(self, dc: str) -> str:
        """What to tell the operator when Consul has no path to ``dc`` (names the datacenters it knows)."""
        settings = self._settings_of(dc)
        try:
            with consul_errors(settings, "listing datacenters (/v1/catalog/datacenters)"):
                known = settings.client().catalog.datacenters()
        except ConsulError:
            known = []
        return (f"Consul at {settings.address} has no path to datacenter {dc!r} (it knows "
                f"{', '.join(known) or 'no other'}): check the datacenter names of --catalog consul:... and that "
                "the Consul servers are WAN-joined (or give that datacenter's own address: consul:dc1,dc2=ADDR)")

    def _read_datacenter(self, dc: str) -> tuple[Catalog, tuple[tuple[str, str], ...], dict[str, int]]:
        n_idx, nodes = self._read("reading the node list (/v1/catalog/nodes)", lambda c: c.catalog.nodes(), dc)
        s_idx, names = self._read("reading the service list (/v1/catalog/services)", lambda c: c.catalog.services(), dc)
        c_idx, checks = self._read("reading health checks (/v1/health/state/any)", lambda c: c.health.state("any"), dc)
        services: dict[str, Any] = {}
        for name in sorted(names or {}):
            if name in IGNORED_SERVICES:
                continue
            def read_service(c: consul.Consul, n: str = name) -> tuple[Any, Any]:
                return c.catalog.service(n)

            _, services[name] = self._read(f"reading service {name!r} (/v1/catalog/service/{name})", read_service, dc)
        catalog, rejected = assemble_catalog_reporting(nodes or [], services, checks or [], datacenter=dc or None)
        return catalog, rejected, {"nodes": n_idx, "services": s_idx, "checks": c_idx}

    def _note_rejected(self, rejected: tuple[tuple[str, str], ...]) -> None:
        """Keep the entries left out for :meth:`health`; log each once when it appears and when it goes."""
        before = dict(self._rejected)
        now = dict(rejected)
        for where, why in now.items():
            if before.get(where) != why:
                log.warning("skipping a Consul catalog entry meshcore cannot use (fix the registration): %s: %s",
                            where, why)
        for where in before.keys() - now.keys():
            log.info("Consul catalog entry no longer skipped (fixed or deregistered): %s", where)
        self._rejected = rejected

    def _blocking_index(self, key: str, index: int, wait: float) -> int:
        """One blocking query on the endpoint of ``key`` (``[<dc>/]<endpoint>``); returns Consul's index."""
        dc, endpoint = split_key(key)
        wait_arg = f"{max(1, int(wait * 1000))}ms"
        calls = {
            "nodes": lambda c: c.catalog.nodes(index=index, wait=wait_arg),
            "services": lambda c: c.catalog.services(index=index, wait=wait_arg),
            "checks": lambda c: c.health.state("any", index=index, wait=wait_arg),
        }
        new, _ = self._read(f"watching {endpoint} (blocking query at index {index})", calls[endpoint], dc)
        return new

    # ------------------------------------------------------------------ CatalogSource
    def poll(self, index: int | None, wait: float) -> CatalogUpdate:
        """Block until the catalog changed past ``index`` (or ``wait`` s passed); return the full catalog.

        ``index=None`` (or 0) reads at once. Raises ConsulError / ConsulAuthError.
        """
        if self._closed.is_set():
            raise ConsulError("this ConsulCatalogSource is closed")
        if not index or index <= 0:
            return self._refresh(None, reason="initial read" if index is None else "index 0: full read")
        with self._lock:
            ours = bool(self._indexes) and index == self._combined
            known = dict(self._indexes) if ours and self._indexes else {e: index for e in WATCHED}
            reread, self._reread = self._reread, False
        if not ours and len(self._targets) > 1:
            # a combined index of several datacenters is no index of any one endpoint: start from a full read
            return self._refresh(None, reason="index not this source's: full read", previous_index=index)
        if reread:
            # The last poll failed (Consul unreachable, restarted?): read at once instead of blocking at an
            # index a restarted Consul may never reach again; a reset is seen now, not after a whole wait.
            try:
                return self._refresh(known if ours else None, reason="re-read after an error", previous_index=index)
            except Exception:
                self._reread = True
                raise
        # Consul holds a blocking query for wait plus up to wait/16 of jitter: allow for that (and a
        # little transport time) so the answer - possibly "index went backwards" - is not missed.
        wait = max(0.0, wait)
        held = self._hold.remaining()
        if held is not None:
            wait = min(wait, held + 0.05)  # a hold ends on time even when Consul stays quiet
        grace = min(_GRACE, 0.05 + wait / 4)
        try:
            outcome = self._wait_for_change(known, wait, time.monotonic() + wait + wait / 16 + grace)
        except Exception:
            self._reread = True
            raise
        if outcome == "timeout" and ours and self._catalog is not None:
            if self._hold.state is not None and self._hold.remaining() == 0 and self._hold.last_read is not None:
                catalog = self._hold.publish(self._hold.last_read, index=index)  # expired: Consul's read as it is
                with self._lock:
                    self._catalog = catalog
                return CatalogUpdate(catalog, index, extra={"changed": True, "reason": "hold expired",
                                                            "indexes": dict(known)})
            return CatalogUpdate(self._catalog, index, extra={"changed": False, "indexes": dict(known)})
        return self._refresh(known if ours else None, reason=outcome, previous_index=index)

    def _refresh(self, previous: dict[str, int] | None, reason: str, previous_index: int | None = None) -> CatalogUpdate:
        """Full read. ``previous``: our per-endpoint indexes before it (None if the caller's index was not ours)."""
        catalog, indexes = self.read_catalog()
        went_back = (any(indexes[e] < previous[e] for e in self._keys) if previous is not None
                     else previous_index is not None and self._combine(indexes) < previous_index)
        reset = reason == "reset" or went_back
        if reset:
            log.warning("Consul index went backwards (snapshot restore or Consul upgrade?); did a full read and "
                        "restarted blocking from the new indexes consul=%s previous=%s now=%s",
                        self.settings.address, previous or previous_index, indexes)
        indexes = {e: max(1, i) for e, i in indexes.items()}  # never block on an index < 1
        combined = self._combine(indexes)
        before = self._combine(previous) if previous is not None else previous_index
        catalog = self._hold.publish(catalog, reset=reset, index=combined, previous_index=before)
        with self._lock:
            self._indexes, self._combined, self._catalog = indexes, combined, catalog
        log.debug("catalog read consul=%s index=%d reason=%s instances=%d", self.settings.address, combined,
                  reason, len(catalog.instances))
        return CatalogUpdate(catalog, combined, extra={"changed": True, "reset": reset, "reason": reason,
                                                       "indexes": dict(indexes), "holding": self._hold.state is not None})

    def health(self) -> SourceHealth:
        """``holding`` while last good instances are held (see the module docstring), else ``ok``."""
        detail = self._hold.describe()
        kind = f"consul {self.settings.address}"
        if len(self._targets) > 1:
            kind += " datacenters " + ",".join(f"{dc}@{s.address}" if s.address != self.settings.address else dc
                                               for dc, s in self._targets)
        return SourceHealth(name="catalog", kind=kind,
                            state="holding" if detail else ("ok" if self._catalog is not None else "starting"),
                            detail=detail, index=self._combined or 0, rejected=self._rejected)

    def _wait_for_change(self, known: dict[str, int], wait: float, deadline: float) -> str:
        """Block on all watched endpoints; "changed", "reset" (an index went backwards) or "timeout"."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0 or self._closed.is_set():
                return "timeout"
            pending: dict[Future, str] = {}
            consul_wait = wait - (now - started)
            for endpoint, index in known.items():
                w = self._watches.get(endpoint)
                if w is None or w.index != index:
                    if consul_wait < 0.05:
                        continue  # past the wait: only answers already on their way count
                    w = _Watch(index, _spawn(self._blocking_index, endpoint, index, consul_wait))
                    self._watches[endpoint] = w
                pending[w.future] = endpoint
            if not pending:
                return "timeout"
            done, _ = wait_futures(pending, timeout=min(remaining, _SLICE), return_when=FIRST_COMPLETED)
            for future in done:
                endpoint = pending[future]
                self._watches.pop(endpoint, None)  # close() may have cleared them meanwhile
                new = future.result()  # raises the translated ConsulError
                if new > known[endpoint]:
                    return "changed"
                if new < known[endpoint]:
                    return "reset"
                # same index: that query's wait ran out; the loop starts a fresh one

    def close(self) -> None:
        """Stop using Consul: a poll blocked waiting for a change returns at once (as a timeout) and later
        polls raise. Pending blocking queries run out on their own (daemon threads)."""
        self._closed.set()
        self._watches.clear()
