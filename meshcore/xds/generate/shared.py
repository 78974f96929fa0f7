"""Resources many proxies share identically: generated once per key, handed to each build as a copy.

A :class:`Keyed` names one shareable resource as a pure function of the snapshot and a key
(``make(snapshot, *args)``: a host's ClusterLoadAssignment, a service's upstream cluster). Generators ask
for it through a :class:`SharedResources` passed in explicitly (the composer's ``shared`` argument);
without one (``None``) they call ``make`` themselves, so output is byte-identical either way.

What a :class:`SharedResources` hands out is the caller's own copy: policy plugins that edit a cluster
or an assignment per proxy (a DestinationRule's traffic policy, locality priorities) edit that copy,
never the shared entry. After the plugins, :meth:`SharedResources.finish` puts the shared, serialized
entry back wherever the copy came out unchanged, and keeps the edited copy (serialized per proxy) where
a plugin changed it. No global state: the memo lives as long as whoever passed it in keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from google.protobuf.message import Message

if TYPE_CHECKING:
    from ...snapshot import MeshSnapshot


@dataclass(frozen=True)
class Keyed:
    """One shareable resource: ``make(snapshot, *args)``, a pure function of the snapshot and ``args``.

    Hashable (``make`` is a module-level function, ``args`` plain values), so it is the memo's key.
    """

    make: Callable[..., Message]
    args: tuple

    def __post_init__(self) -> None:
        # Hashed once: the engine puts every key of every proxy's last build in sets on each change.
        object.__setattr__(self, "_hash", hash((self.make, self.args)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    def build(self, snapshot: "MeshSnapshot") -> Message:
        return self.make(snapshot, *self.args)


class SharedResources(Protocol):
    """What a generator needs from a memo of shared resources (see the module docstring)."""

    def get(self, keyed: Keyed) -> Message:
        """A copy of the resource ``keyed`` names, for this build to use (and edit) as its own."""

    def finish(self, resources: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """``resources`` with every unedited copy replaced by its shared, serialized entry."""


def shared_or_built(snapshot: "MeshSnapshot", keyed: Keyed, shared: SharedResources | None) -> Message:
    """``keyed``'s resource from ``shared`` when given, else built here."""
    return keyed.build(snapshot) if shared is None else shared.get(keyed)


__all__ = ["Keyed", "SharedResources", "shared_or_built"]
