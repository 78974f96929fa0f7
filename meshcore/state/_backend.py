"""The state backend interface: a small key/value store with compare-and-set and prefix watches.

Keys are relative, ``/``-separated paths (``ca/authority``, ``tokens/join/<sha256>``): no leading
``/``, no empty, ``.`` or ``..`` segment, no segment starting with ``.`` (the directory backend keeps
its lock files there). Values are bytes. Every stored entry carries an ``index``: Consul's
``ModifyIndex`` in KV, a content stamp in the state directory; it is never 0, and 0 means "absent"
when given as ``cas``, exactly as in Consul's ``?cas=0``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import StoreError


@dataclass(frozen=True)
class Entry:
    """One stored key: its value and the index a compare-and-set names."""

    key: str
    value: bytes
    index: int


@dataclass(frozen=True)
class Put:
    """One write of :meth:`StateBackend.put_all`: ``cas`` None writes unconditionally, 0 only if absent."""

    key: str
    value: bytes
    cas: int | None = None


@runtime_checkable
class StateBackend(Protocol):
    """Where a control plane keeps its shared state (see ``docs/ha.md``)."""

    @property
    def location(self) -> str:
        """Where the state is, for messages: ``state directory /var/lib/meshcore`` or ``Consul KV 'meshcore/state/' at ...``."""
        ...

    @property
    def shared(self) -> bool:
        """True when other control plane replicas see the same state (Consul KV)."""
        ...

    def get(self, key: str) -> Entry | None:
        """The entry at ``key``; None when absent."""
        ...

    def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """Write ``value``; with ``cas``, only when the key's index is still ``cas`` (0: absent). False: lost."""
        ...

    def put_all(self, puts: Sequence[Put], *, guard: Sequence[dict] = ()) -> bool:
        """Several writes that all happen or none (False: a ``cas`` did not hold, nothing was written).

        ``guard``: Consul transaction operations put first in the same ``/v1/txn``, e.g. the leader lock's
        ``check-session`` from ``Leadership.fence()``; when one fails nothing is written and StoreError says
        so. The state directory has one writer (one replica, always the leader) and ignores it."""
        ...

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        """Remove ``key`` (absent is fine); with ``cas``, only while its index is ``cas``. False: lost."""
        ...

    def list(self, prefix: str) -> builtins.list[Entry]:
        """Every entry whose key starts with ``prefix``, sorted by key."""
        ...

    def watch(self, prefix: str, index: int, wait: float) -> tuple[builtins.list[Entry], int]:
        """:meth:`list` once something under ``prefix`` changed after ``index`` (0: at once) or ``wait`` seconds
        passed; returns the entries and the index to pass next time (a Consul blocking query)."""
        ...

    def close(self) -> None:
        ...


def check_key(key: str, *, prefix: bool = False) -> str:
    """``key`` when it is a valid state key (``prefix``: may be empty or end with ``/``); StoreError otherwise."""
    if not isinstance(key, str):
        raise StoreError(f"state key {key!r} must be a string")
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and not body:
        return key
    segments = body.split("/")
    if key.startswith("/") or any(not s or s in (".", "..") or s.startswith(".") for s in segments):
        raise StoreError(f"state key {key!r} is not a relative path of plain segments (no leading '/', "
                         "no empty, '.' or '..' segment, none starting with '.')")
    return key
