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

**Across a restart** (:class:`HoldMemory`): a control plane restarted while Consul is still empty or partial
has no last good catalog in memory, and would publish the partial one. With a memory file (the control
plane keeps ``catalog-hold.json`` in its state directory: local disk, not Consul, which is what lost the
data) the hold writes the last good catalog, its Consul index and an active hold's reason and deadline
(wall clock) when they change (a hold beginning or ending at once, instances or nodes that come or go
within :data:`SAVE_MIN_INTERVAL_S`, other changes at most every :data:`SAVE_EVERY_S`). A new hold reads it back at start, when it is younger than
``max_age_s`` and was written for the same Consul address: the first read is then judged against it (an
index below the remembered one is a reset), and a hold that was active continues until its original
deadline, not a fresh ``hold_s``. The file is only a reference: a damaged or unreadable one is logged and
ignored (the hold starts without memory, as before), and a failure to write it is logged, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .._files import atomic_write
from .model import Catalog, Node, ServiceInstance, Upstream

log = logging.getLogger("meshcore.catalog.consul")

DEFAULT_HOLD_S = 120.0
DEFAULT_SHRINK_THRESHOLD = 0.5
MIN_SUSPECT_LOSS = 2
"""A shrink is suspect only when at least this many instances vanished at once (one VM leaving a tiny mesh
is not lost data)."""


DEFAULT_MEMORY_MAX_AGE_S = 3600.0
"""A remembered catalog older than this (a control plane down for longer) is not used as a reference."""
SAVE_EVERY_S = 30.0
"""A good catalog that changed only in content (health, meta), not in which instances or nodes it holds, is
written at most this often: the hold is about instances that went missing."""
SAVE_MIN_INTERVAL_S = 1.0
"""Instances or nodes that came or went are written at most this often (a hold beginning or ending at once)."""
MEMORY_VERSION = 1


def _key(inst: ServiceInstance) -> tuple[str, str]:
    return (inst.node, inst.id)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _decode(cls: type, raw: dict[str, Any]) -> Any:
    """``cls`` from :func:`_encode`'s output: lists back to tuples, nested upstreams; unknown keys ignored."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue  # written by an older meshcore: the field's default
        value = raw[f.name]
        if f.name == "upstreams":
            value = tuple(_decode(Upstream, u) for u in value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    return {"nodes": [_encode(n) for n in catalog.nodes], "instances": [_encode(i) for i in catalog.instances]}


def catalog_from_json(raw: dict[str, Any]) -> Catalog:
    return Catalog.of([_decode(Node, n) for n in raw["nodes"]], [_decode(ServiceInstance, i) for i in raw["instances"]])


@dataclass(frozen=True)
class Remembered:
    """What a :class:`HoldMemory` file holds: the last good catalog, its index, an active hold."""

    good: Catalog
    index: int
    saved_at: float  # epoch seconds
    hold_reason: str = ""  # "" : no hold was active
    hold_since: float = 0.0  # epoch seconds
    hold_until: float = 0.0  # epoch seconds


class HoldMemory:
    """The hold's memory across control plane restarts: one JSON file (see the module docstring)."""

    def __init__(self, path: Path | str, where: str = "consul", max_age_s: float = DEFAULT_MEMORY_MAX_AGE_S,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.where = where
        self.max_age_s = max_age_s
        self._clock = clock

    def load(self) -> Remembered | None:
        """The remembered state, or None (no file, too old, another Consul, damaged: logged)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("version") != MEMORY_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, this meshcore writes {MEMORY_VERSION}")
            hold = raw.get("hold") or {}
            remembered = Remembered(good=catalog_from_json(raw["good"]), index=int(raw["index"]),
                                    saved_at=float(raw["saved_at"]), hold_reason=str(hold.get("reason") or ""),
                                    hold_since=float(hold.get("since") or 0.0), hold_until=float(hold.get("until") or 0.0))
            where = str(raw.get("consul") or "")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the catalog hold's memory %s (%s: %s); a Consul that lost its data before the "
                        "first good read after this start is not held", self.path, type(exc).__name__, exc)
            return None
        age = self._clock() - remembered.saved_at
        if where != self.where:
            log.info("not using the catalog hold's memory %s: it was written for Consul at %s, this is %s",
                     self.path, where, self.where)
            return None
        if age > self.max_age_s:
            log.info("not using the catalog hold's memory %s: it is %.0fs old (more than %.0fs)", self.path, age,
                     self.max_age_s)
            return None
        return remembered

    def save(self, good: Catalog, index: int, hold: "HoldState | None", monotonic_now: float) -> None:
        """Write the state; a hold's monotonic times are stored as wall clock. Never raises (logs)."""
        now = self._clock()
        data: dict[str, Any] = {"version": MEMORY_VERSION, "consul": self.where, "saved_at": now, "index": index,
                                "good": catalog_to_json(good), "hold": None}
        if hold is not None:
            data["hold"] = {"reason": hold.reason, "since": now - (monotonic_now - hold.since),
                            "until": now + (hold.until - monotonic_now)}
        try:
            atomic_write(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            log.error("cannot write the catalog hold's memory %s (%s); a control plane restarted while Consul has "
                      "lost its data would not hold the last good endpoints", exc.filename or self.path,
                      exc.strerror or exc)


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
                 clock: Callable[[], float] = time.monotonic, where: str = "consul", memory: HoldMemory | None = None):
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
        self.memory = memory
        self._remembered_index: int | None = None  # the index of a remembered good catalog, until the first read
        self._saved: tuple[frozenset, frozenset, bool, float] | None = None  # what was last written (see _remember)
        self._saved_good: Catalog | None = None
        self._index = 0
        if memory is not None:
            self._restore(memory)

    def _restore(self, memory: HoldMemory) -> None:
        remembered = memory.load()
        if remembered is None:
            return
        self.good = remembered.good
        self._remembered_index = remembered.index
        now, wall = self._clock(), memory._clock()
        restored = "as remembered"
        if remembered.hold_reason and remembered.hold_until > wall:
            self.state = HoldState(reason=f"{remembered.hold_reason} (held since before this control plane restarted)",
                                   since=now - (wall - remembered.hold_since), until=now + (remembered.hold_until - wall),
                                   reference=remembered.good)
            restored = f"with the hold it had ({remembered.hold_until - wall:.0f}s left)"
        log.info("catalog hold remembers the last good catalog from before this start %s: %d instance(s) at index %d, "
                 "%.0fs old consul=%s", restored, len(remembered.good.instances), remembered.index,
                 wall - remembered.saved_at, self._where)

    def remaining(self) -> float | None:
        """Seconds until the hold expires (None: no hold)."""
        return None if self.state is None else max(0.0, self.state.until - self._clock())

    def publish(self, read: Catalog, *, reset: bool = False, index: int = 0, previous_index: int | None = None) -> Catalog:
        """What to publish for Consul's ``read`` (``reset``: the index went backwards)."""
        if self._remembered_index is not None:  # the first read after a start with memory
            if previous_index is None and index < self._remembered_index:
                reset, previous_index = True, self._remembered_index
            self._remembered_index = None
        self._index = index
        published = self._publish(read, reset, index, previous_index)
        self._remember()
        return published

    def _publish(self, read: Catalog, reset: bool, index: int, previous_index: int | None) -> Catalog:
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

    def _remember(self) -> None:
        """Write the memory when what it holds changed (see the module docstring): at once when a hold begins
        or ends, within :data:`SAVE_MIN_INTERVAL_S` when instances or nodes come or go, else every
        :data:`SAVE_EVERY_S` (a write of a 5,000-instance catalog takes ~0.2 s, so a churning fleet is not
        written on every read)."""
        if self.memory is None or self.good is None:
            return
        good, now, holding = self.good, self._clock(), self.state is not None
        saved = self._saved
        if saved is not None and saved[2] == holding and (now - saved[3] < SAVE_MIN_INTERVAL_S
                                                          or self._saved_good is good):
            return
        shape = (frozenset(_key(i) for i in good.instances), frozenset(n.name for n in good.nodes), holding)
        if saved is not None and saved[:3] == shape and now - saved[3] < SAVE_EVERY_S:
            return
        self.memory.save(good, self._index, self.state, now)
        self._saved, self._saved_good = (*shape, now), good

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


__all__ = ["CatalogHold", "DEFAULT_HOLD_S", "DEFAULT_MEMORY_MAX_AGE_S", "DEFAULT_SHRINK_THRESHOLD", "HoldMemory", "HoldState",
           "Remembered", "catalog_from_json", "catalog_to_json"]
