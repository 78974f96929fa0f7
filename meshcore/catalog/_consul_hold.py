"""Pure: last known good through Consul faults (issue 12, finding 11).

When Consul restarts empty (or a snapshot is restored), its index goes backwards and its catalog is, for
a while, missing every instance whose agent has not re-registered yet; publishing that read as it is takes
working endpoints away (the finding: ingress refused connections until the agents came back). Consul's own
agents re-register everything they know through anti-entropy within a minute or so, and keep serving
their local state meanwhile. :class:`CatalogHold` does the same for the mesh:

* a read is **suspect** when the index went backwards and any instance of the last good catalog is missing,
  or when more than ``shrink_threshold`` of its instances (and at least :data:`MIN_SUSPECT_LOSS`) vanished
  in one update;
* while suspect, the published catalog is Consul's read *plus* the missing instances (and their nodes) as
  last seen: new registrations and health changes of present instances still flow;
* the hold ends when every held instance has re-registered, or after ``hold_s`` seconds, whichever comes
  first (then Consul's read is published as it is). Each step logs one WARNING line saying so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from .model import Catalog, ServiceInstance

log = logging.getLogger("meshcore.catalog.consul")

DEFAULT_HOLD_S = 120.0
DEFAULT_SHRINK_THRESHOLD = 0.5
MIN_SUSPECT_LOSS = 2
"""A shrink is suspect only when at least this many instances vanished at once (one VM leaving a tiny mesh
is not lost data)."""


def _key(inst: ServiceInstance) -> tuple[str, str]:
    return (inst.node, inst.id)


@dataclass(frozen=True)
class HoldState:
    """An active hold: since when, until when (monotonic), why, and what is held."""

    reason: str
    since: float
    until: float
    reference: Catalog  # the last good catalog when the hold began
    held: tuple[tuple[str, str], ...] = ()  # (node, instance id) still missing from Consul's reads


class CatalogHold:
    """Decides what to publish for each catalog read (see the module docstring)."""

    def __init__(self, hold_s: float = DEFAULT_HOLD_S, shrink_threshold: float = DEFAULT_SHRINK_THRESHOLD,
                 clock: Callable[[], float] = time.monotonic, where: str = "consul"):
        if hold_s < 0:
            raise ValueError(f"catalog hold must be >= 0 seconds, got {hold_s}")
        if not 0 < shrink_threshold <= 1:
            raise ValueError(f"catalog shrink threshold must be a fraction in (0, 1], got {shrink_threshold}")
        self.hold_s = hold_s
        self.shrink_threshold = shrink_threshold
        self._clock = clock
        self._where = where
        self.good: Catalog | None = None  # the last catalog published without a hold
        self.state: HoldState | None = None
        self.last_read: Catalog | None = None  # Consul's last read as it was

    def remaining(self) -> float | None:
        """Seconds until the hold expires (None: no hold)."""
        return None if self.state is None else max(0.0, self.state.until - self._clock())

    def publish(self, read: Catalog, *, reset: bool = False, index: int = 0, previous_index: int | None = None) -> Catalog:
        """What to publish for Consul's ``read`` (``reset``: the index went backwards)."""
        self.last_read = read
        now = self._clock()
        if self.state is None:
            reason = self._suspect(read, reset, index, previous_index)
            if reason is None or self.hold_s == 0:
                self.good = read
                return read
            assert self.good is not None
            self.state = HoldState(reason=reason, since=now, until=now + self.hold_s, reference=self.good)
            missing = self._missing(read, self.good)
            log.warning("Consul's catalog looks like lost data (%s); holding the last good endpoints of %d missing "
                        "instance(s) for up to %.0fs or until they re-register, as Consul's agents do consul=%s "
                        "read=%d good=%d", reason, len(missing), self.hold_s, self._where, len(read.instances),
                        len(self.good.instances))
        state = self.state
        missing = self._missing(read, state.reference)
        if not missing:
            log.warning("every held instance re-registered in Consul after %.0fs; the catalog hold ended consul=%s",
                        now - state.since, self._where)
            return self._end(read)
        if now >= state.until:
            log.warning("catalog hold expired after %.0fs with %d instance(s) still missing from Consul (%s); publishing "
                        "Consul's catalog as it is consul=%s", now - state.since, len(missing),
                        ", ".join(f"{n}/{i}" for n, i in sorted(_key(m) for m in missing)[:10]), self._where)
            return self._end(read)
        self.state = HoldState(reason=state.reason, since=state.since, until=state.until,
                               reference=state.reference, held=tuple(sorted(_key(m) for m in missing)))
        nodes = {n.name: n for n in state.reference.nodes}
        nodes.update({n.name: n for n in read.nodes})
        return Catalog.of(nodes.values(), list(read.instances) + missing)

    def _end(self, read: Catalog) -> Catalog:
        self.state = None
        self.good = read
        return read

    @staticmethod
    def _missing(read: Catalog, reference: Catalog) -> list[ServiceInstance]:
        present = {_key(i) for i in read.instances}
        return [i for i in reference.instances if _key(i) not in present]

    def _suspect(self, read: Catalog, reset: bool, index: int, previous_index: int | None) -> str | None:
        good = self.good
        if good is None or not good.instances:
            return None
        lost = len(self._missing(read, good))
        if reset and lost:
            went = f" from {previous_index} to {index}" if previous_index is not None else ""
            return f"X-Consul-Index went backwards{went} (Consul restarted or restored) and {lost} instance(s) are gone"
        if lost >= MIN_SUSPECT_LOSS and lost > self.shrink_threshold * len(good.instances):
            return (f"{lost} of {len(good.instances)} instances gone in one update (more than "
                    f"{self.shrink_threshold:.0%})")
        return None

    def describe(self) -> str:
        """One line for status ("" without a hold)."""
        state = self.state
        if state is None:
            return ""
        left = max(0.0, state.until - self._clock())
        return (f"holding {len(state.held)} instance(s) missing from Consul as last seen, for up to {left:.0f}s more "
                f"or until they re-register: {state.reason}")


__all__ = ["CatalogHold", "DEFAULT_HOLD_S", "DEFAULT_SHRINK_THRESHOLD", "HoldState"]
