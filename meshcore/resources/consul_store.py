"""Mesh resources in Consul KV: replicated, watchable, written all-or-nothing.

Each resource is stored as its canonical JSON (``Resource.canonical_json()``) under
``<prefix><Kind>/<namespace>/<name>``. ``apply`` and ``delete`` are one ``/v1/txn`` each, so
either every key changes or none does. Consul caps a transaction at 128 operations; a larger
batch is refused with a :class:`StoreError` rather than split into several transactions, which
would no longer be atomic. ``watch`` is a blocking recursive GET on the prefix.

Stored documents are parsed back into :class:`Resource` as they are; validating them is the
job of the resources validation layer, not of the store.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
from typing import Sequence

import consul

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConflictError, StoreError
from .model import Resource, ResourceKey

log = logging.getLogger("meshcore.resources.consul")

DEFAULT_PREFIX = "meshcore/resources/"
MAX_TXN_OPS = 128


def parse_document(key: str, value: bytes | str | None) -> Resource:
    """Stored JSON -> Resource; a StoreError names the key when the document is unusable."""
    try:
        doc = json.loads(value or b"")
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") or {}
        return Resource(
            api_version=doc["apiVersion"],
            kind=doc["kind"],
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            spec=doc.get("spec"),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"Consul KV key {key!r} does not hold a meshcore resource document ({exc!r}); "
                         f"fix or remove it (consul kv delete {key!r})") from exc


class ConsulKVStore:
    """A :class:`~meshcore.resources.store.ResourceStore` on Consul KV (see the module docstring)."""

    def __init__(self, settings: ConsulSettings, prefix: str = DEFAULT_PREFIX):
        if not prefix or prefix.startswith("/"):
            raise StoreError(f"Consul KV prefix {prefix!r} must be non-empty and must not start with '/'")
        self.settings = settings
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._consul: consul.Consul | None = None

    @property
    def _client(self) -> consul.Consul:
        if self._consul is None:
            self._consul = self.settings.client()
        return self._consul

    def _errors(self, doing: str):
        return consul_errors(self.settings, doing, error=StoreError, auth_error=StoreError)

    def key_for(self, key: ResourceKey) -> str:
        return self.prefix + key.path

    # ------------------------------------------------------------------ reads
    def _decode(self, entries: list[dict] | None) -> list[Resource]:
        out = []
        for e in entries or []:
            if e["Key"].endswith("/") and not e.get("Value"):
                continue  # a "folder" key made by the UI or CLI
            resource = parse_document(e["Key"], e.get("Value"))
            if self.key_for(resource.key) != e["Key"]:
                raise StoreError(f"Consul KV key {e['Key']!r} holds {resource.key} (expected at "
                                 f"{self.key_for(resource.key)!r}); move or remove it")
            out.append(resource)
        return sorted(out, key=lambda r: r.key.path)

    def list(self) -> list[Resource]:
        return self.watch(None, 0)[0]

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]:
        """Blocking recursive read of the prefix; ``index=None`` (or 0) returns at once."""
        kwargs = {}
        if index and index > 0:
            kwargs = {"index": index, "wait": f"{max(1, int(wait * 1000))}ms"}
        with self._errors(f"reading resources under {self.prefix!r}"):
            new_index, entries = self._client.kv.get(self.prefix, recurse=True, **kwargs)
        return self._decode(entries), max(1, int(new_index))

    # ------------------------------------------------------------------ writes
    def _txn(self, ops: builtins.list[dict], doing: str) -> builtins.list[dict]:
        if len(ops) > MAX_TXN_OPS:
            raise StoreError(f"{doing}: {len(ops)} Consul operations exceed the {MAX_TXN_OPS} Consul allows in one "
                             "transaction; nothing was written. Apply fewer resources at a time")
        with self._errors(doing):
            response = raw(self._client, "PUT", "/v1/txn", body=ops)
        if response.code == 409:
            errors = json.loads(response.body or "{}").get("Errors") or []
            what = "; ".join(f"operation {e.get('OpIndex')}: {e.get('What')}" for e in errors)
            raise ConflictError(f"{doing}: Consul rolled the transaction back, nothing was written ({what}); "
                                "re-read and retry")
        check(response, self.settings, doing, error=StoreError, auth_error=StoreError)
        return (json.loads(response.body or "{}").get("Results")) or []

    def apply(self, resources: Sequence[Resource]) -> None:
        """Write every resource in one transaction (all-or-nothing)."""
        if not resources:
            return
        seen: dict[str, Resource] = {}
        for r in resources:
            if r.key.path in seen:
                raise StoreError(f"apply got {r.key} twice; nothing was written")
            seen[r.key.path] = r
        ops = [{"KV": {"Verb": "set", "Key": self.key_for(r.key),
                       "Value": base64.b64encode(r.canonical_json().encode()).decode("ascii")}} for r in resources]
        self._txn(ops, f"applying {len(resources)} resource(s) under {self.prefix!r}")
        log.info("applied resources count=%d prefix=%s", len(resources), self.prefix)

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:
        """Remove ``keys`` in one transaction; return those that existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        ops = []
        for k in unique:
            ops.append({"KV": {"Verb": "get-or-empty", "Key": self.key_for(k)}})
            ops.append({"KV": {"Verb": "delete", "Key": self.key_for(k)}})
        results = self._txn(ops, f"deleting {len(unique)} resource(s) under {self.prefix!r}")
        existed = {r["KV"]["Key"] for r in results if r.get("KV") and (r["KV"].get("CreateIndex") or 0) > 0}
        removed = [k for k in unique if self.key_for(k) in existed]
        log.info("deleted resources count=%d prefix=%s", len(removed), self.prefix)
        return removed

    def close(self) -> None:
        self._consul = None
