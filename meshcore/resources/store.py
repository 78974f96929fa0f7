"""The small interface both resource stores (local directory, Consul KV) implement, and their health."""

from __future__ import annotations

import builtins
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

from .model import Resource, ResourceKey

StoreState = Literal["ok", "suspect"]


class ResourceStore(Protocol):
    """Stores validated resources.

    ``apply`` and ``delete`` are all-or-nothing: either every given resource is written/removed,
    or none is (and :class:`meshcore.errors.StoreError` is raised), also when the writer is killed
    at any point. ``watch(index, wait)`` blocks until the contents change past ``index`` (or
    ``wait`` passes) and returns the full list with the new index; ``index=None`` returns at once.

    A store may also offer ``health() -> StoreHealth`` (see :func:`store_health`) and ``unreadable() ->
    dict[str, str]``: the documents its last read left out because they are no resource document at all
    (where -> why; one bad document never fails a read).
    """

    def list(self) -> list[Resource]: ...

    def apply(self, resources: Sequence[Resource]) -> None: ...

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:  # (list: the method above)
        """Remove these keys; return the ones that existed."""
        ...

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]: ...


@dataclass(frozen=True)
class StoreHealth:
    """What a store knows about its own contents (``meshctl store status``, the control plane's status).

    ``state`` is ``"ok"`` or ``"suspect"``: the backend lost resources this control plane had applied
    (Consul KV emptied, or its generation went backwards); the store then keeps serving the last good
    generation (``held_*``) and refuses writes until ``meshctl store restore``. ``message`` says what
    happened and what to do.
    """

    backend: str  # "consul" or "dir"
    location: str  # KV prefix (with the Consul address) or directory
    state: StoreState = "ok"
    message: str = ""
    generation: int = 0  # the backend's generation counter now
    resources: int = 0  # resources the backend holds now
    held_generation: int = 0  # the generation of the control plane's own (sealed) copy; 0: none kept
    held_resources: int = 0
    suspect_since: float | None = None  # epoch seconds
    # stored documents the last read could not use (unparsable, or at the wrong key), left out of the mesh:
    # (where: "Kind/namespace/name (file or KV key)", why)
    unreadable: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": self.location, "state": self.state, "message": self.message,
                "generation": self.generation, "resources": self.resources, "held_generation": self.held_generation,
                "held_resources": self.held_resources, "suspect_since": self.suspect_since,
                "unreadable": [{"key": where, "error": why} for where, why in self.unreadable]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "StoreHealth":
        state = raw.get("state")
        return cls(backend=str(raw.get("backend", "")), location=str(raw.get("location", "")),
                   state="suspect" if state == "suspect" else "ok", message=str(raw.get("message", "")),
                   generation=int(raw.get("generation") or 0), resources=int(raw.get("resources") or 0),
                   held_generation=int(raw.get("held_generation") or 0),
                   held_resources=int(raw.get("held_resources") or 0),
                   suspect_since=float(raw["suspect_since"]) if raw.get("suspect_since") is not None else None,
                   unreadable=tuple((str(u.get("key", "")), str(u.get("error", "")))
                                    for u in raw.get("unreadable") or () if isinstance(u, dict)))


class UnreadableDocuments:
    """What a store's last read could not use at all (where -> why): logged once at ERROR as each appears,
    at INFO as it clears; thread-safe. ``what`` names the thing in the log ("file", "document")."""

    def __init__(self, logger: logging.Logger, what: str):
        self._log, self._what = logger, what
        self._found: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, found: dict[str, str]) -> None:
        with self._lock:
            for where, why in sorted(found.items()):
                if self._found.get(where) != why:
                    self._log.error("unreadable resource %s left out of the mesh: %s: %s (`meshctl delete KIND NAME "
                                    "-n NAMESPACE` removes it)", self._what, where, why)
            for where in sorted(self._found.keys() - found.keys()):
                self._log.info("resource %s readable again or removed: %s", self._what, where)
            self._found = dict(found)

    def get(self) -> dict[str, str]:
        with self._lock:
            return dict(self._found)


def store_health(store: object) -> StoreHealth:
    """``store.health()``, or an "ok" health for a store that does not report one (a test's plain object)."""
    health = getattr(store, "health", None)
    if callable(health):
        result = health()
        if isinstance(result, StoreHealth):
            return result
    return StoreHealth(backend=type(store).__name__, location="")


__all__ = ["ResourceStore", "StoreHealth", "StoreState", "UnreadableDocuments", "store_health"]
