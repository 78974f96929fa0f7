"""Consul KV as a :class:`~meshcore.state.StateBackend`: every control plane replica sees the same state.

Key ``k`` is the Consul key ``<prefix>k`` (default prefix ``meshcore/state/``, a sibling of the resource
store's ``meshcore/resources/``: see ``docs/ha.md`` for the layout). The index of an entry is its
``ModifyIndex``; ``cas`` is Consul's ``?cas=``; :meth:`ConsulStateBackend.put_all` is one ``/v1/txn``;
:meth:`ConsulStateBackend.watch` is a recursive blocking query on the prefix. It uses the resource store's
Consul plumbing (:class:`~meshcore.catalog._consul_settings.ConsulSettings`, its client and error
translation): no second Consul client.
"""

from __future__ import annotations

import base64
import builtins
import functools
import json
from collections.abc import Sequence
from typing import Any

import consul

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import StoreAuthError, StoreError
from ._backend import Entry, Put, check_key

DEFAULT_PREFIX = "meshcore/state/"
MAX_TXN_OPS = 64  # as the resource store: within every Consul release's limit


def state_prefix_for(store_prefix: str) -> str:
    """The state prefix beside a resource store prefix: ``meshcore/resources/`` -> ``meshcore/state/``."""
    parent = store_prefix.rstrip("/").rpartition("/")[0]
    return f"{parent}/state/" if parent else "meshcore-state/"


class ConsulStateBackend:
    """State under one Consul KV prefix (see the module docstring)."""

    shared = True

    def __init__(self, settings: ConsulSettings, prefix: str = DEFAULT_PREFIX):
        if not prefix or prefix.startswith("/"):
            raise StoreError(f"Consul KV state prefix {prefix!r} must be non-empty and must not start with '/'")
        self.settings = settings
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    @functools.cached_property
    def _client(self) -> consul.Consul:
        return self.settings.client()

    @property
    def location(self) -> str:
        return f"Consul KV {self.prefix!r} at {self.settings.address}"

    def _errors(self, doing: str):
        return consul_errors(self.settings, doing, error=StoreError, auth_error=StoreAuthError)

    def _entry(self, item: dict) -> Entry:
        return Entry(item["Key"][len(self.prefix):], bytes(item.get("Value") or b""), int(item["ModifyIndex"]))

    def get(self, key: str) -> Entry | None:
        full = self.prefix + check_key(key)
        with self._errors(f"reading {full!r}"):
            _, item = self._client.kv.get(full)
        return self._entry(item) if item else None

    def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        full = self.prefix + check_key(key)
        with self._errors(f"writing {full!r}"):
            return bool(self._client.kv.put(full, bytes(value), cas=cas))

    def put_all(self, puts: Sequence[Put], *, guard: Sequence[dict] = ()) -> bool:
        if not puts:
            return True
        if len(puts) + len(guard) > MAX_TXN_OPS:
            raise StoreError(f"{len(puts)} writes exceed the {MAX_TXN_OPS} one Consul transaction takes; "
                             "nothing was written (the caller batches)")
        ops: list[dict[str, Any]] = [dict(g) for g in guard]  # e.g. the leader key's check-session: first
        for p in puts:
            op: dict[str, Any] = {"Key": self.prefix + check_key(p.key), "Value": base64.b64encode(bytes(p.value)).decode("ascii")}
            op.update({"Verb": "set"} if p.cas is None else {"Verb": "cas", "Index": p.cas})
            ops.append({"KV": op})
        doing = f"writing {len(puts)} key(s) under {self.prefix!r}"
        with self._errors(doing):
            response = raw(self._client, "PUT", "/v1/txn", body=ops)
        if response.code == 409:
            errors = json.loads(response.body or "{}").get("Errors") or []
            if any("cas" not in str(e.get("What", "")).lower() and "index" not in str(e.get("What", "")).lower()
                   for e in errors):
                raise StoreError(f"Consul refused {doing}: {errors}")
            return False
        check(response, self.settings, doing, error=StoreError, auth_error=StoreAuthError)
        return True

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        full = self.prefix + check_key(key)
        with self._errors(f"removing {full!r}"):
            return bool(self._client.kv.delete(full, cas=cas))

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self.watch(prefix, 0, 0)[0]

    def watch(self, prefix: str, index: int, wait: float) -> tuple[builtins.list[Entry], int]:
        full = self.prefix + check_key(prefix, prefix=True)
        kwargs = {"index": index, "wait": f"{max(1, int(wait * 1000))}ms"} if index and index > 0 else {}
        with self._errors(f"reading {full!r}"):
            new_index, items = self._client.kv.get(full, recurse=True, **kwargs)
        entries = [self._entry(i) for i in items or [] if not (i["Key"].endswith("/") and not i.get("Value"))]
        return sorted(entries, key=lambda e: e.key), max(1, int(new_index or 1))

    def close(self) -> None:
        self.__dict__.pop("_client", None)
