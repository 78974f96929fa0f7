"""The narrow interfaces the control plane's features are handed instead of the daemon object.

A feature (operator API, dashboard, alerting, canaries, federation, dry-runs) receives exactly what it
uses: a :class:`~meshcore.resources.store.ResourceStore`, the :class:`MeshView` (the engine's and the
xDS cache's read side), the CA, a :class:`SettingsHandle` to change mesh settings, a
:class:`CaControl`, or a :class:`Leadership` handle (whether this replica runs the singleton work). The daemon (:mod:`.daemon`) is the one place that wires them from its parts, so a
test hands a feature plain functions, and a change inside the engine touches :meth:`MeshView.of` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..catalog.model import Catalog
    from ..snapshot import MeshSettings, MeshSnapshot
    from ..xds.cache import SnapshotCache
    from .engine import MeshEngine, ProxyState


@dataclass(frozen=True)
class MeshView:
    """What the mesh looks like now, read-only: the engine's snapshot, catalog and proxies, and what the
    xDS cache published to each proxy and whether it ACKed it."""

    snapshot: Callable[[], MeshSnapshot | None]
    catalog: Callable[[], Catalog | None]
    proxies: Callable[[], Mapping[str, ProxyState]]  # node -> its build state (info, error, built_hash)
    build_for: Callable[[str], dict | None]  # node -> the resources built for it now (None: not connected)
    published: Callable[[str], Any]  # node -> the ProxySnapshot the cache serves it (None: nothing yet)
    synced: Callable[[str], bool]  # node ACKed every type's current version
    connected_nodes: Callable[[], Iterable[str]]
    cache_status: Callable[[str], dict]  # node -> the cache's status of it ({} when unknown)
    ready: Callable[[], bool]  # a first snapshot was built

    @classmethod
    def of(cls, engine: MeshEngine, cache: SnapshotCache) -> MeshView:
        def cache_status(node: str) -> dict:
            try:
                return cache.status(node) or {}
            except KeyError:
                return {}

        return cls(snapshot=lambda: engine.snapshot, catalog=engine.catalog, proxies=lambda: dict(engine.proxies),
                   build_for=engine.build_for, published=cache.get, synced=lambda n: bool(cache.synced(n)),
                   connected_nodes=cache.connected_nodes, cache_status=cache_status, ready=engine.ready.is_set)


class SettingsHandle(Protocol):
    """The mesh settings in force and the way to change them (the engine rebuilds what they affect)."""

    @property
    def settings(self) -> MeshSettings: ...

    def set_settings(self, settings: MeshSettings) -> None: ...

    def update_settings(self, change: Callable[[MeshSettings], MeshSettings]) -> None:
        """``change(current)`` in force, atomically (no other writer's change lost in between)."""
        ...


@dataclass(frozen=True)
class CaControl:
    """The CA's lifecycle as the operator API drives it: status, start, release (held) and finish a root rotation.
    (The daemon implements them: a rotation also moves its serving certificates and TLS roots.)"""

    status: Callable[[], dict]
    rotate: Callable[..., dict]  # (force, hold=False)
    finish: Callable[[bool], dict]  # force
    release: Callable[[], dict] = dict  # a held rotation moves on


class Leadership(Protocol):
    """Whether this control plane replica is the leader, which runs the mesh's singleton work (root rotation
    steps, canary controllers, alert notifications, cleanup); see :mod:`.leadership`. Serving xDS, signing
    and the operator API never need it. With one replica (``--store dir``) it always leads."""

    replica_id: str

    def is_leader(self) -> bool:
        """True while this replica holds the leadership (false from the moment it may have lost it)."""
        ...

    def leader(self) -> str:
        """The leading replica's id as last seen ("" while there is none)."""
        ...

    def term(self) -> int:
        """How many times this replica became leader; a new value is a new term (resume from stored state)."""
        ...

    def subscribe(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``fn(is_leader)`` on every change of this replica's leadership; returns the unsubscribe."""
        ...

    def wait_leader(self, timeout: float | None = None) -> bool:
        """Block until this replica leads (or ``timeout``, or the handle stops); returns :meth:`is_leader`."""
        ...

    def status(self) -> dict:
        """For the operator API: mode, replica, leader, is_leader and the election's details."""
        ...

    def fence(self) -> list[dict]:
        """``/v1/txn`` operations to put before a leader-only write: they fail the transaction unless this
        replica still holds the lock (a ``check-session`` on the leader key); [] where there is no lock."""
        ...


__all__ = ["CaControl", "Leadership", "MeshView", "SettingsHandle"]
