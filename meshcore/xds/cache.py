"""Per-node xDS snapshots and the bookkeeping of what each proxy was sent and accepted.

The split follows go-control-plane: the *cache* holds one immutable :class:`ProxySnapshot` per
node and knows nothing about gRPC; the *server* (:mod:`meshcore.xds.server`) watches the cache and
speaks the protocol. The cache also keeps each node's delivery status (streams, sent/ACKed versions,
NACKs) so that operators and tests can ask "is vm1 running the config we built for it?".

Versions are content hashes: each resource is serialized once, deterministically, and hashed
(:class:`Prepared`); type and snapshot versions derive from those, so the same resources in any
order give the same version and republishing an unchanged build wakes nobody and pushes nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any as _AnyT

from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshcore.errors import XdsError
from meshcore.xds._typeurls import MESSAGE_CLASS, PUSH_ORDER, SERVED_TYPES, resource_name

__all__ = ["Prepared", "ProxySnapshot", "SnapshotCache"]

_VERSION_CHARS = 16
_TYPE_PREFIX = "type.googleapis.com/"


# --- entries and versions -----------------------------------------------------------------------

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_CHARS]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One resource serialized once: its name, deterministic bytes and their hash.

    ``version`` is the first 16 hex chars of the sha256 of ``body``; delta xDS sends it as the
    resource's version. Nested ``Any`` payloads are hashed as the bytes they hold, so whoever packs
    them must pack deterministically (``Any.Pack(m, deterministic=True)``), which generation does.
    Make one with :meth:`of` and hand the same entry to every proxy that shares the resource: it is
    serialized and hashed only once however many snapshots hold it.

    Only the bytes are kept (a parsed message costs several times its serialized size, per proxy):
    :attr:`message` parses a fresh copy on each use, :attr:`any` packs the bytes on each use.
    :meth:`derived` memoizes a value computed from the content once per entry (validation's
    cross-references), so an entry reused by many snapshots is analysed once.

    A control plane holds one entry per resource of every connected proxy (~90 each), so an entry is one
    object for the cyclic garbage collector: slots (no ``__dict__``), and the memo a tuple of pairs, which
    the collector stops tracking when its values are strings and tuples (as validation's are).
    """

    name: str
    body: bytes = field(repr=False)
    version: str
    type_url: str
    cls: type[Message] = field(repr=False, compare=False)
    _derived: tuple[tuple[str, _AnyT], ...] = field(default=(), init=False, repr=False, compare=False)

    @classmethod
    def of(cls, message: Message, body: bytes | None = None) -> "Prepared":
        """``message`` serialized and hashed (``body``: its deterministic bytes, when already at hand)."""
        if body is None:
            body = message.SerializeToString(deterministic=True)
        return cls(
            name=resource_name(message),
            body=body,
            version=_digest(body),
            type_url=_TYPE_PREFIX + message.DESCRIPTOR.full_name,
            cls=type(message),
        )

    @property
    def message(self) -> Message:
        """The resource as a message: a new copy parsed from :attr:`body` (the caller's to edit)."""
        message = self.cls()
        message.ParseFromString(self.body)
        return message

    @property
    def any(self) -> any_pb2.Any:
        """The resource packed for a DiscoveryResponse."""
        return any_pb2.Any(type_url=self.type_url, value=self.body)

    def derived(self, key: str, compute: Callable[[], _AnyT]) -> _AnyT:
        """``compute()``, once per entry and ``key`` (it must depend only on this resource's content)."""
        for known, value in self._derived:
            if known == key:
                return value
        value = compute()
        # (two threads computing at once both add theirs: harmless, the first found is used)
        object.__setattr__(self, "_derived", (*self._derived, (key, value)))
        return value


class _Parsed(Mapping[str, tuple[Message, ...]]):
    """``type_url -> messages`` over a snapshot's entries, parsed on lookup."""

    def __init__(self, entries: Mapping[str, Mapping[str, Prepared]]):
        self._entries = entries

    def __getitem__(self, type_url: str) -> tuple[Message, ...]:
        return tuple(e.message for e in self._entries[type_url].values())

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _type_version(entries: Iterable[Prepared]) -> str:
    """Version of one type: a hash over the sorted (name, resource version) pairs."""
    return _digest("".join(f"{e.name}\0{e.version}\n" for e in entries).encode())


# --- the snapshot -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProxySnapshot:
    """Everything one proxy should run, by type URL; immutable and content-versioned.

    ``resources[type_url]`` is sorted by resource name. Every resource is serialized once
    (:class:`Prepared`); its version is a hash of those bytes (:meth:`resource_versions`).
    ``versions[type_url]`` hashes the sorted (name, resource version) pairs of a type, and ``version``
    hashes the per-type versions. Every served type is present (possibly empty), so a proxy
    subscribing to a type the build left empty still gets an answer it can ACK.
    """

    versions: Mapping[str, str]
    version: str
    _entries: Mapping[str, Mapping[str, Prepared]] = field(repr=False, compare=False)

    @property
    def resources(self) -> Mapping[str, tuple[Message, ...]]:
        """Every resource as a message by type URL, sorted by name. The snapshot keeps bytes only: a
        type's messages are parsed anew each time it is looked up (iterating the type URLs parses nothing)."""
        return _Parsed(self._entries)

    @classmethod
    def of(cls, resources_by_type: Mapping[str, Iterable[Message | Prepared]]) -> "ProxySnapshot":
        """Build a snapshot from messages and/or :class:`Prepared` entries (used as they are).

        Raises :class:`XdsError` for an unknown type URL or a wrong message class.
        """
        unknown = set(resources_by_type) - SERVED_TYPES
        if unknown:
            raise XdsError(f"snapshot has unsupported type URL(s) {sorted(unknown)}; served: {sorted(SERVED_TYPES)}")
        versions: dict[str, str] = {}
        entries: dict[str, Mapping[str, Prepared]] = {}
        for type_url in PUSH_ORDER:
            expected = MESSAGE_CLASS[type_url]
            prepared: list[Prepared] = []
            for item in resources_by_type.get(type_url, ()):
                kind = item.cls if isinstance(item, Prepared) else type(item)
                if not issubclass(kind, expected):
                    raise XdsError(
                        f"snapshot resource of type {kind.__name__} listed under {type_url}; "
                        f"expected {expected.__name__}"
                    )
                prepared.append(item if isinstance(item, Prepared) else Prepared.of(item))
            prepared.sort(key=lambda e: e.name)
            versions[type_url] = _type_version(prepared)
            entries[type_url] = MappingProxyType({e.name: e for e in prepared})
        overall = _digest("".join(f"{t}={versions[t]}\n" for t in sorted(versions)).encode())
        return cls(
            versions=MappingProxyType(versions),
            version=overall,
            _entries=MappingProxyType(entries),
        )

    def replaced(self, entries: Iterable[Prepared]) -> "ProxySnapshot":
        """This snapshot with each of ``entries`` in place of the entry of the same type and name: only the
        types that hold a different object are re-versioned, the others are this snapshot's own mappings
        (what an endpoint-only change re-assembles: a few ClusterLoadAssignments of ~90 resources).
        Raises :class:`KeyError` for an entry whose name the snapshot does not hold (a full build is needed)."""
        changed: dict[str, dict[str, Prepared]] = {}
        for entry in entries:
            current = self._entries.get(entry.type_url)
            held = current.get(entry.name) if current is not None else None
            if held is None:
                raise KeyError(f"{entry.type_url} {entry.name!r}")
            if held is entry:
                continue
            if not issubclass(entry.cls, MESSAGE_CLASS[entry.type_url]):
                raise XdsError(f"snapshot resource of type {entry.cls.__name__} listed under {entry.type_url}")
            into = changed.get(entry.type_url)
            if into is None:
                into = changed[entry.type_url] = dict(self._entries[entry.type_url])  # (name order kept)
            into[entry.name] = entry
        if not changed:
            return self
        versions, by_type = dict(self.versions), dict(self._entries)
        for type_url, into in changed.items():
            versions[type_url] = _type_version(into.values())
            by_type[type_url] = MappingProxyType(into)
        overall = _digest("".join(f"{t}={versions[t]}\n" for t in sorted(versions)).encode())
        return ProxySnapshot(versions=MappingProxyType(versions), version=overall, _entries=MappingProxyType(by_type))

    def names(self, type_url: str) -> tuple[str, ...]:
        """Resource names of one type, sorted."""
        return tuple(self._entries.get(type_url, {}))

    def entries(self, type_url: str) -> Mapping[str, Prepared]:
        """The prepared resources of one type by name (in name order)."""
        return self._entries.get(type_url, MappingProxyType({}))

    def resource_versions(self, type_url: str) -> dict[str, str]:
        """``name -> version`` of every resource of one type (what delta xDS compares)."""
        return {name: e.version for name, e in self._entries.get(type_url, {}).items()}

    def packed(self, type_url: str, names: Iterable[str] | None = None) -> list[any_pb2.Any]:
        """Resources of one type packed for a DiscoveryResponse; all of them, or only ``names`` that exist."""
        entries = self._entries.get(type_url, {})
        if names is None:
            return [e.any for e in entries.values()]
        wanted = set(names)
        return [e.any for name, e in entries.items() if name in wanted]


# --- delivery status --------------------------------------------------------------------------

@dataclass
class _StreamStatus:
    protocol: str = "sotw"  # "sotw" or "delta"
    subscribed: dict[str, bool] = field(default_factory=dict)  # type_url -> counts for "synced"
    acked: dict[str, str] = field(default_factory=dict)


@dataclass
class _NodeStatus:
    streams: dict[str, _StreamStatus] = field(default_factory=dict)
    sent: dict[str, str] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)
    nacks: dict[str, int] = field(default_factory=dict)
    last_nack: dict[str, _AnyT] | None = None


Watcher = Callable[[], None]


class SnapshotCache:
    """Thread-safe map ``node id -> ProxySnapshot`` plus per-node delivery status.

    Stream handlers learn about changes either with :meth:`watch` (a callback run after each
    effective :meth:`set`/:meth:`remove`, outside the lock; it must be quick, e.g. ``queue.put``)
    or by blocking in :meth:`wait_for_change` on the node's generation counter.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._generation: dict[str, int] = {}
        self._watchers: dict[str, dict[int, Watcher]] = {}
        self._next_watch = 0
        self._status: dict[str, _NodeStatus] = {}

    # -- snapshots --

    def set(self, node_id: str, snapshot: ProxySnapshot) -> bool:
        """Store ``snapshot`` for ``node_id``; False (and nobody woken) when its version is unchanged."""
        with self._lock:
            current = self._snapshots.get(node_id)
            if current is not None and current.version == snapshot.version:
                return False
            self._snapshots[node_id] = snapshot
            watchers = self._bump(node_id)
        _notify(watchers)
        return True

    def get(self, node_id: str) -> ProxySnapshot | None:
        with self._lock:
            return self._snapshots.get(node_id)

    def remove(self, node_id: str) -> bool:
        """Forget a node's snapshot (its open streams keep what they have); False if there was none."""
        with self._lock:
            if self._snapshots.pop(node_id, None) is None:
                return False
            watchers = self._bump(node_id)
            status = self._status.get(node_id)
            if status is not None and not status.streams:
                del self._status[node_id]
        _notify(watchers)
        return True

    def nodes(self) -> list[str]:
        """Nodes that have a snapshot, sorted."""
        with self._lock:
            return sorted(self._snapshots)

    def _bump(self, node_id: str) -> list[Watcher]:
        self._generation[node_id] = self._generation.get(node_id, 0) + 1
        self._changed.notify_all()
        return list(self._watchers.get(node_id, {}).values())

    # -- waiting for change --

    def watch(self, node_id: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback()`` after every change of ``node_id``'s snapshot; returns an unsubscribe function."""
        with self._lock:
            key = self._next_watch
            self._next_watch += 1
            self._watchers.setdefault(node_id, {})[key] = callback

        def cancel() -> None:
            with self._lock:
                watchers = self._watchers.get(node_id)
                if watchers is not None:
                    watchers.pop(key, None)
                    if not watchers:
                        del self._watchers[node_id]

        return cancel

    def generation(self, node_id: str) -> int:
        """Counter bumped on every change of ``node_id``'s snapshot (0 before the first)."""
        with self._lock:
            return self._generation.get(node_id, 0)

    def wait_for_change(self, node_id: str, generation: int, timeout: float | None = None) -> int:
        """Block until ``node_id``'s generation differs from ``generation`` (or timeout); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation.get(node_id, 0) != generation, timeout)
            return self._generation.get(node_id, 0)

    # -- delivery status (written by the server) --

    def _node(self, node_id: str) -> _NodeStatus:
        return self._status.setdefault(node_id, _NodeStatus())

    def stream_opened(self, node_id: str, stream_id: str, protocol: str = "sotw") -> None:
        with self._lock:
            self._node(node_id).streams[stream_id] = _StreamStatus(protocol=protocol)
            self._changed.notify_all()

    def stream_closed(self, node_id: str, stream_id: str) -> None:
        with self._lock:
            status = self._status.get(node_id)
            if status is not None:
                status.streams.pop(stream_id, None)
            self._changed.notify_all()

    def record_subscription(self, node_id: str, stream_id: str, type_url: str, active: bool) -> None:
        """``active``: the stream wants something of this type (wildcard or a non-empty name list)."""
        with self._lock:
            stream = self._node(node_id).streams.get(stream_id)
            if stream is not None:
                stream.subscribed[type_url] = active

    def record_sent(self, node_id: str, type_url: str, version: str) -> None:
        with self._lock:
            status = self._node(node_id)
            status.sent[type_url] = version
            status.pushes[type_url] = status.pushes.get(type_url, 0) + 1

    def record_ack(self, node_id: str, stream_id: str, type_url: str, version: str) -> None:
        with self._lock:
            status = self._node(node_id)
            status.acked[type_url] = version
            stream = status.streams.get(stream_id)
            if stream is not None:
                stream.acked[type_url] = version
            self._changed.notify_all()

    def record_nack(self, node_id: str, type_url: str, version: str, message: str) -> None:
        """Envoy rejected ``version`` of ``type_url`` with ``message`` (its ``error_detail``)."""
        with self._lock:
            status = self._node(node_id)
            status.nacks[type_url] = status.nacks.get(type_url, 0) + 1
            now = time.time()
            status.last_nack = {
                "type_url": type_url,
                "version": version,
                "message": message,
                "timestamp": now,
                "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            }
            self._changed.notify_all()

    def connected_nodes(self) -> list[str]:
        """Nodes with at least one open, authorized stream."""
        with self._lock:
            return sorted(n for n, s in self._status.items() if s.streams)

    def status(self, node_id: str) -> dict[str, _AnyT]:
        """JSON-friendly delivery status of one node (also for nodes without a snapshot yet)."""
        with self._lock:
            snapshot = self._snapshots.get(node_id)
            status = self._status.get(node_id, _NodeStatus())
            subscribed = sorted({t for s in status.streams.values() for t, active in s.subscribed.items() if active})
            return {
                "node": node_id,
                "version": snapshot.version if snapshot else None,
                "versions": dict(snapshot.versions) if snapshot else {},
                "connected_streams": len(status.streams),
                "protocols": sorted({s.protocol for s in status.streams.values()}),
                "subscribed": subscribed,
                "sent": dict(status.sent),
                "acked": dict(status.acked),
                "pushes": dict(status.pushes),
                "nacks": dict(status.nacks),
                "last_nack": dict(status.last_nack) if status.last_nack else None,
                "synced": self._synced_locked(node_id),
            }

    def synced(self, node_id: str) -> bool:
        """True when the node is connected and has ACKed the current version of every type it subscribed to."""
        with self._lock:
            return self._synced_locked(node_id)

    def wait_synced(self, node_id: str, timeout: float) -> bool:
        """Block until :meth:`synced` is true or ``timeout`` seconds pass; returns the final answer."""
        with self._changed:
            return self._changed.wait_for(lambda: self._synced_locked(node_id), timeout)

    def _synced_locked(self, node_id: str) -> bool:
        snapshot = self._snapshots.get(node_id)
        status = self._status.get(node_id)
        if snapshot is None or status is None or not status.streams:
            return False
        any_subscription = False
        for stream in status.streams.values():
            for type_url, active in stream.subscribed.items():
                if not active:
                    continue
                any_subscription = True
                if stream.acked.get(type_url) != snapshot.versions.get(type_url):
                    return False
        return any_subscription


def _notify(watchers: list[Watcher]) -> None:
    for callback in watchers:
        callback()
