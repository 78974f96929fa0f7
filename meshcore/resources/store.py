"""The small interface both resource stores (local directory, Consul KV) implement."""

from __future__ import annotations

import builtins
from typing import Protocol, Sequence

from .model import Resource, ResourceKey


class ResourceStore(Protocol):
    """Stores validated resources.

    ``apply`` and ``delete`` are all-or-nothing: either every given resource is written/removed,
    or none is (and :class:`meshcore.errors.StoreError` is raised). ``watch(index, wait)``
    blocks until the contents change past ``index`` (or ``wait`` passes) and returns the full
    list with the new index; ``index=None`` returns at once.
    """

    def list(self) -> list[Resource]: ...

    def apply(self, resources: Sequence[Resource]) -> None: ...

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:  # (list: the method above)
        """Remove these keys; return the ones that existed."""
        ...

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]: ...
