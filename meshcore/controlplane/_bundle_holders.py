"""Private: which nodes hold the trust bundle, across every control plane replica (the gate of a root rotation).

A prepared root rotation moves to "rotating" (new leaves from the new root) only once every node with a connected
Envoy holds the two-root bundle. One replica knows only its own part of that: the Envoys streaming ADS from *it*
and the agents that reported their bundle (``X-Meshcore-Bundle-SHA256``) to *it*; an agent and its Envoy may even
use different replicas. So while a rotation is being prepared every replica publishes its part in the shared
state at ``ca/holders/<replica id>``::

    {"replica": "cp-b", "bundle": "<sha256 of the current bundle>", "at": <epoch s>,
     "connected": ["vm-1", ...], "holding": ["vm-1", ...]}

and the leader takes the union over the replicas: a node is still without the bundle when some replica has its
Envoy connected and no replica heard its agent report the current bundle. A replica that is not alive (not passing
in Consul: killed, or stalled past its check's TTL) cannot withdraw or update its part, yet the Envoys it served
need time to reconnect to another replica (Envoy's ADS retry backs off up to 30 s): until they do, no live part
names them, and the rotation would move on without them. So a departed replica's nodes still count as connected
for :data:`DEPARTED_GRACE_S` after this replica first saw it departed; after that only what its agents reported
(``holding``) counts. A live
replica that has not published for the current bundle yet counts as ``replica <id>`` in that list (its nodes are
unknown) for :data:`REPORT_GRACE_S`, then it is skipped with a warning (a replica of an older release publishes
nothing). Each replica writes its key only when its part changed (and at most every :data:`MIN_WRITE_S`), and
removes it when no rotation is being prepared. Nothing here is secret.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from ..errors import MeshError
from ..state import StateBackend

log = logging.getLogger("meshcore.controlplane.bundle_holders")

HOLDERS_PREFIX = "ca/holders/"
REPORT_GRACE_S = 30.0  # how long a live replica that has not published its part holds the rotation up
DEPARTED_GRACE_S = 60.0  # how long a departed replica's connected nodes still count (time to reconnect elsewhere)
MIN_WRITE_S = 0.5  # at most one write per this many seconds per replica (a burst of acks is one write)


class BundleHolders:
    """This replica's part of "who holds the bundle" (``publish``) and the whole mesh's (``missing``).

    ``replica_id()`` names this replica (its id may be filled in after the port is bound); ``live()`` answers
    the ids of the replicas passing in Consul, or None when that is not known (then every published part
    counts)."""

    def __init__(self, backend: StateBackend, replica_id: Callable[[], str],
                 live: Callable[[], set[str] | None], *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.backend = backend
        self._replica_id, self._live, self._clock, self._monotonic = replica_id, live, clock, monotonic
        self._written: dict | None = None  # the part last written (None: no key of ours)
        self._written_at = float("-inf")
        self._unreported: dict[tuple[str, str], float] = {}  # (replica, bundle) -> when first seen without a part
        self._skipped: set[tuple[str, str]] = set()
        self._departed: dict[tuple[str, str], float] = {}  # (replica, bundle) -> when first seen not alive

    def _key(self) -> str:
        return HOLDERS_PREFIX + self._replica_id()

    def publish(self, bundle: str, connected: Iterable[str], acks: Mapping[str, str]) -> None:
        """Write this replica's part when it changed (MeshError when the state cannot be written)."""
        part = {"replica": self._replica_id(), "bundle": bundle, "connected": sorted(set(connected)),
                "holding": sorted(n for n, sha in acks.items() if sha == bundle)}
        if part == self._written or self._monotonic() - self._written_at < MIN_WRITE_S:
            return
        self.backend.put(self._key(), json.dumps({**part, "at": round(self._clock(), 3)}, sort_keys=True).encode())
        self._written, self._written_at = part, self._monotonic()

    def share(self, preparing: bool, bundle: str, connected: Iterable[str], acks: Mapping[str, str]) -> None:
        """Each look of the CA watcher: publish this replica's part while a rotation is being prepared, remove
        it otherwise. A state write that fails is logged and tried again at the next look."""
        try:
            if preparing:
                self.publish(bundle, connected, acks)
            else:
                self.withdraw()
        except MeshError as exc:
            log.warning("cannot share which nodes hold the trust bundle at %s (%s); retrying at the next look",
                        self.backend.location, exc)

    def withdraw(self) -> None:
        """No rotation is being prepared (or this replica stops): remove this replica's part."""
        if self._written is None:
            return
        self.backend.delete(self._key())
        self._written = None

    def missing(self, bundle: str, connected: Iterable[str], acks: Mapping[str, str]) -> list[str]:
        """The nodes with a connected Envoy (on any live replica) that no replica heard holding ``bundle``, then
        ``replica <id>`` for each live replica whose part is not known yet (see the module docstring). This
        replica's own part is the one given (``connected``, ``acks``), not the stored copy."""
        me = self._replica_id()
        wanted = set(connected)
        holding = {n for n, sha in acks.items() if sha == bundle}
        live = self._live()
        reported = {me}
        now = self._monotonic()
        for entry in self.backend.list(HOLDERS_PREFIX):
            try:
                part = json.loads(entry.value)
                rid = str(part["replica"])
                if rid == me or part.get("bundle") != bundle:
                    continue
                holding.update(str(n) for n in part.get("holding") or ())  # what an agent reported stays true
                if live is not None and rid not in live:
                    departed = self._departed.setdefault((rid, bundle), now)
                    if now - departed >= DEPARTED_GRACE_S:
                        continue
                else:
                    self._departed.pop((rid, bundle), None)
                    reported.add(rid)
                wanted.update(str(n) for n in part.get("connected") or ())
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bundle holders entry %s unreadable, ignored: %s", entry.key, exc)
                continue
        out = sorted(wanted - holding)
        for rid in sorted((live or set()) - reported):
            first = self._unreported.setdefault((rid, bundle), now)
            if now - first < REPORT_GRACE_S:
                out.append(f"replica {rid}")
            elif (rid, bundle) not in self._skipped:
                self._skipped.add((rid, bundle))
                log.warning("replica=%s has not reported which of its nodes hold the new trust bundle within %.0fs "
                            "(an older release?); the rotation goes on without its part", rid, REPORT_GRACE_S)
        return out


def live_replicas(listing: Callable[[], Iterable]) -> Callable[[], set[str] | None]:
    """``live()`` for :class:`BundleHolders` from a registry's ``replicas()`` (ReplicaStatus: id, healthy);
    None when Consul cannot be asked (then every published part counts)."""

    def live() -> set[str] | None:
        try:
            return {r.id for r in listing() if r.healthy}
        except MeshError as exc:
            log.warning("cannot list the control plane replicas (%s); counting every published bundle part", exc)
            return None

    return live
