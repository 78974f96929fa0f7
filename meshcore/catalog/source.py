"""The small interface every catalog source implements."""

from __future__ import annotations

from typing import Protocol

from .model import CatalogUpdate


class CatalogSource(Protocol):
    """A source of the service catalog.

    ``poll(index, wait)`` blocks until the catalog has changed past ``index`` or ``wait`` seconds
    pass, then returns the full current catalog with its new index. ``index=None`` returns at once.
    Errors are raised as :class:`meshcore.errors.CatalogError`; callers retry with backoff.

    Optional hint, for sources that know what they re-read: ``CatalogUpdate.changed_services`` is
    the set of services whose instances may differ from those in this source's previous update
    (a superset is fine, e.g. every service with an instance on a re-read node; ``None``, the
    default, means unknown). A source that fills it promises that every service outside the set
    has instances equal to the previous update's, so the engine compares and re-hashes only those.
    Node changes (address, datacenter, meta) are always found by comparison; they need no hint.
    """

    def poll(self, index: int | None, wait: float) -> CatalogUpdate: ...

    def close(self) -> None: ...
