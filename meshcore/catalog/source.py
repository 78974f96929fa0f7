"""The small interface every catalog source implements."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class SourceHealth:
    """How a source (the catalog, the resource store) is doing, for ``meshctl status``.

    ``state`` is ``ok``, ``error`` (its last read failed: the mesh keeps what it last read from it),
    ``holding`` (it answered, but the answer looked like lost data: the last good contents are held, see
    :mod:`meshcore.catalog.consul`) or ``starting`` (nothing read yet). ``rejected`` lists the documents
    left out as ``(key, error)`` (for the resource store: a stored document that fails validation).
    """

    name: str  # "catalog" or "resources"
    kind: str = ""  # e.g. "consul http://127.0.0.1:8500", "directory /var/lib/meshcore/resources"
    state: str = "starting"
    detail: str = ""
    index: int = 0
    error: str = ""  # the last error ("" once a read succeeds again)
    error_at: float = 0.0  # epoch seconds of ``error``
    rejected: tuple[tuple[str, str], ...] = ()


class HealthReporting(Protocol):
    """Optional: a source that knows more of its own state than its errors (the Consul source's hold)."""

    def health(self) -> SourceHealth: ...
