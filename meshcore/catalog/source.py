"""The small interface every catalog source implements."""

from __future__ import annotations

from typing import Protocol

from .model import CatalogUpdate


class CatalogSource(Protocol):
    """A source of the service catalog.

    ``poll(index, wait)`` blocks until the catalog has changed past ``index`` or ``wait`` seconds
    pass, then returns the full current catalog with its new index. ``index=None`` returns at once.
    Errors are raised as :class:`meshcore.errors.CatalogError`; callers retry with backoff.
    """

    def poll(self, index: int | None, wait: float) -> CatalogUpdate: ...

    def close(self) -> None: ...
