"""The engine's memo of shared resources: one :class:`~meshcore.xds.cache.Prepared` entry per key per snapshot.

A :class:`SharedMemo` belongs to one :class:`~meshcore.snapshot.MeshSnapshot`. Each entry is made once,
from a :class:`~meshcore.xds.generate.shared.Keyed` (a pure function of the snapshot and a key), against
its own :class:`~._deps.RecordingSnapshot`, so the entry knows what it read (its :class:`~._deps.Deps`),
independently of which proxy asked first. It is validated once and serialized once, and the same entry
goes into every proxy snapshot that uses it unchanged.

On a change, :meth:`SharedMemo.carry` makes the next snapshot's memo: it keeps every entry the change did
not touch (same reads, same bytes) and drops the others, which are made again on first use. The engine
then rebuilds the proxies whose own reads the change touched, and only *re-assembles* (last per-proxy
resources + current shared entries, no generation) those that merely use a dropped entry.

A :class:`SharedBuild` is the memo as one proxy build sees it (:class:`~meshcore.xds.generate.SharedResources`):
it hands out copies, then tells which came back unedited (``used``: re-assembled on change) and which a
plugin edited (``edited``: their reads count as the proxy's own, so a change to them reaches it).

A :class:`Generated` is one proxy's generator output before any plugin, kept as bytes (and, for the
shared copies, as the :class:`~meshcore.xds.generate.shared.Keyed` they came from). A change that reaches
what the plugins read but not what generation read (a mesh-wide policy) re-runs only the plugins on
:meth:`Generated.copy`: a parse of those bytes, the shared copies taken afresh from the current memo,
which is what the generators would hand the plugins again (their reads are unchanged, so are their keys).
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any, cast

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from google.protobuf.message import Message

from ..snapshot import MeshSnapshot
from ..xds.cache import Prepared
from ..xds.generate.shared import Keyed
from ..xds.generate.vocab import LISTENER, ChainDraft, ListenerDraft, NetworkFilter
from ..xds.validate import validate_snapshot
from ._deps import ALL_RESOURCES, ChangeKeys, Deps, Key, RecordingSnapshot

_EDS_STUB = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


@dataclass(frozen=True)
class Entry:
    prepared: Prepared
    deps: Deps
    problems: tuple[str, ...]  # validation of the resource alone (cross-references are the proxy's)


def _problems(prepared: Prepared) -> tuple[str, ...]:
    """Problems of one shared resource on its own: its type, required fields and name, and (a cluster)
    its TLS contexts; the assignment an EDS cluster names is stubbed, since proxies check that one."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    message = prepared.message
    resources: dict[str, list[Message | Prepared]] = {prepared.type_url: [prepared]}  # analysed once, on the entry
    if isinstance(message, cluster_pb2.Cluster) and message.type == cluster_pb2.Cluster.EDS:
        eds = message.eds_cluster_config.service_name or message.name
        resources[_EDS_STUB] = [endpoint_pb2.ClusterLoadAssignment(cluster_name=eds)]
    return tuple(validate_snapshot("shared", resources))


def _index(index: dict[Key, set[Keyed]], keyed: Keyed, entry: Entry) -> None:
    for key in entry.deps.keys:
        index.setdefault(key, set()).add(keyed)


def _unindex(index: dict[Key, set[Keyed]], keyed: Keyed, entry: Entry) -> None:
    for key in entry.deps.keys:
        found = index.get(key)
        if found is not None:
            found.discard(keyed)
            if not found:
                del index[key]


def merge_deps(own: Deps, more: list[Deps]) -> Deps:
    if not more:
        return own
    keys, services, local = set(own.keys), set(own.services), set(own.local)
    for d in more:
        keys |= d.keys
        services |= d.services
        local |= d.local
    return Deps(frozenset(keys), frozenset(services), frozenset(local))


class SharedMemo:
    """One snapshot's shared entries (thread-safe: the builder and new connections build at once).

    The memos of successive snapshots share one index, dependency key -> the memo keys whose entries read
    it, so :meth:`carry` finds what a change touches without looking at every entry (the memo holds an
    entry per shared cluster and assignment in use: it grows with the mesh, a change does not)."""

    def __init__(self, snapshot: MeshSnapshot, entries: dict[Keyed, Entry] | None = None, *,
                 index: dict[Key, set[Keyed]] | None = None, lock: threading.Lock | None = None):
        self.snapshot = snapshot
        self._entries: dict[Keyed, Entry] = dict(entries or {})
        self._lock = lock or threading.Lock()  # one lock for the memos sharing the index
        if index is None:
            index = {}
            for keyed, entry in self._entries.items():
                _index(index, keyed, entry)
        self._index = index
        self._made: list[Keyed] = []  # keys made in this memo (not carried from the one before)
        self.made = 0  # entries made in this memo (for measurements)

    def entry(self, keyed: Keyed) -> Entry:
        with self._lock:
            found = self._entries.get(keyed)
            if found is None:
                view = RecordingSnapshot(self.snapshot)
                prepared = Prepared.of(keyed.build(cast(MeshSnapshot, view)))
                found = self._entries[keyed] = Entry(prepared, view.deps(), _problems(prepared))
                _index(self._index, keyed, found)
                self._made.append(keyed)
                self.made += 1
            return found

    def carry(self, snapshot: MeshSnapshot, keys: ChangeKeys, in_use: Container[Keyed] | None = None,
              unused: Iterable[Keyed] = ()) -> tuple["SharedMemo", frozenset[Keyed]]:
        """The memo of ``snapshot`` (the next one, ``keys`` being the change) and the keys it dropped
        because the change touched their reads. With ``in_use`` (what the proxies' last builds used), an
        entry made in this memo that no proxy uses is not carried, nor one of ``unused`` (keys no proxy
        uses any more), so the memo does not grow with keys nobody uses. The work is in proportion to the
        entries the change touches and those made or let go since the last carry, not to the memo."""
        with self._lock:
            entries = dict(self._entries)
            if keys.full:
                for keyed, entry in entries.items():
                    _unindex(self._index, keyed, entry)
                return SharedMemo(snapshot, index=self._index, lock=self._lock), frozenset(entries)
            candidates: set[Keyed] = set()
            for key in keys.keys:
                candidates.update(self._index.get(key, ()))
            if keys.resource_kinds:
                candidates.update(self._index.get(ALL_RESOURCES, ()))
                for kind, _services in keys.resource_kinds:
                    candidates.update(self._index.get(("kind", kind), ()))
            dropped = {k for k in candidates if k in entries and keys.reaches(entries[k].deps)}
            gone = set(dropped)
            if in_use is not None:
                gone.update(k for k in (*self._made, *unused) if k in entries and k not in in_use)
            for keyed in gone:
                _unindex(self._index, keyed, entries.pop(keyed))
            return SharedMemo(snapshot, entries, index=self._index, lock=self._lock), frozenset(dropped)

    def session(self) -> "SharedBuild":
        return SharedBuild(self)

    def __len__(self) -> int:
        return len(self._entries)


class SharedBuild:
    """The memo as one proxy build uses it (see the module docstring)."""

    def __init__(self, memo: SharedMemo):
        self.memo = memo
        self._handed: dict[int, tuple[Keyed, Message, Entry]] = {}
        self.used: frozenset[Keyed] = frozenset()
        self.edited: dict[Keyed, Entry] = {}

    def get(self, keyed: Keyed) -> Message:
        entry = self.memo.entry(keyed)
        copy = entry.prepared.message  # parsed anew from the entry's bytes: this build's own copy
        self._handed[id(copy)] = (keyed, copy, entry)
        return copy

    def keyed_of(self, item: Any) -> Keyed | None:
        """The key ``item`` was handed out for by :meth:`get` in this build (None: not a shared copy)."""
        handed = self._handed.get(id(item))
        return handed[0] if handed is not None and handed[1] is item else None

    def finish(self, resources: dict[str, list[Any]]) -> dict[str, list[Any]]:
        used: set[Keyed] = set()
        for type_url, items in resources.items():
            out = []
            for item in items:
                handed = self._handed.get(id(item))
                if handed is None or handed[1] is not item:
                    out.append(item)
                    continue
                keyed, _copy, entry = handed
                if item.SerializeToString(deterministic=True) == entry.prepared.body:
                    out.append(entry.prepared)
                    used.add(keyed)
                else:
                    out.append(item)
                    self.edited[keyed] = entry
            resources[type_url] = out
        self.used = frozenset(used)
        self._handed.clear()
        return resources


_Filter = tuple[str, str, bytes]  # filter name, config message's full name, config bytes
_Chain = tuple[bytes, tuple[_Filter, ...]]
_Draft = tuple[bytes, tuple[_Chain, ...]]
_Slot = Keyed | tuple[str, bytes]  # shared: its key; own: (message full name, bytes)

_CLASSES: dict[str, type[Message]] = {}
"""Message classes by full name, as :meth:`Generated.keep` met them. What a proxy keeps names its classes
by string, so its tuples hold only strings and bytes, which the cyclic garbage collector stops tracking."""


def _name_of(message: Message) -> str:
    kind = type(message)
    name = kind.DESCRIPTOR.full_name
    if name not in _CLASSES:
        _CLASSES[name] = kind
    return name


class Generated:
    """One proxy's generator output before any plugin, as bytes (see the module docstring).

    Listener drafts keep the bytes of their listener, of each filter chain and of each network filter's
    config (with its message class); every other resource its own bytes, or the key of the shared entry
    it was a copy of. Serialized deterministically right after generation, before any plugin edits the
    messages, so :meth:`copy` hands the plugins what the generators handed them.
    """

    __slots__ = ("listeners", "others", "size")

    def __init__(self, listeners: tuple[_Draft, ...], others: dict[str, tuple[_Slot, ...]], size: int):
        self.listeners = listeners
        self.others = others
        self.size = size  # bytes held (for measurements)

    @classmethod
    def keep(cls, generated: dict[str, list[Any]], session: SharedBuild | None) -> "Generated":
        size = 0

        def body(message: Message) -> bytes:
            nonlocal size
            data = message.SerializeToString(deterministic=True)
            size += len(data)
            return data

        listeners = tuple(
            (body(d.message), tuple((body(c.message), tuple((f.name, _name_of(f.config), body(f.config)) for f in c.filters))
                                    for c in d.filter_chains))
            for d in generated.get(LISTENER, ()))
        others: dict[str, tuple[_Slot, ...]] = {}
        for type_url, items in generated.items():
            if type_url == LISTENER:
                continue
            slots: list[_Slot] = []
            for item in items:
                keyed = session.keyed_of(item) if session is not None else None
                slots.append(keyed if keyed is not None else (_name_of(item), body(item)))
            others[type_url] = tuple(slots)
        return cls(listeners, others, size)

    def copy(self, session: SharedBuild | None) -> dict[str, list[Any]]:
        """A fresh copy of the generator output for the plugins to edit; shared copies come from ``session``."""
        out: dict[str, list[Any]] = {LISTENER: [
            ListenerDraft(_parse(listener_pb2.Listener, lb), [
                ChainDraft(_parse(listener_components_pb2.FilterChain, cb),
                           [NetworkFilter(name, _parse(_CLASSES[kind], fb)) for name, kind, fb in filters])
                for cb, filters in chains])
            for lb, chains in self.listeners]}
        for type_url, slots in self.others.items():
            items: list[Any] = []
            for slot in slots:
                if isinstance(slot, Keyed):
                    if session is None:
                        raise ValueError(f"{type_url}: a shared resource needs the memo it came from")
                    items.append(session.get(slot))
                else:
                    items.append(_parse(_CLASSES[slot[0]], slot[1]))
            out[type_url] = items
        return out


def _parse(kind: type[Message], data: bytes) -> Any:
    message = kind()
    message.ParseFromString(data)
    return message


__all__ = ["Entry", "SharedMemo", "SharedBuild", "Generated", "merge_deps"]
