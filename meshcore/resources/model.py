"""Mesh resources: Istio-style YAML documents (apiVersion, kind, metadata, spec)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResourceKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        """Store path, e.g. ``PeerAuthentication/default/strict`` (Consul KV key suffix, file name stem)."""
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Resource:
    """One validated resource. ``spec`` is plain JSON data; treat it as read-only."""

    api_version: str
    kind: str
    name: str
    namespace: str
    spec: Any
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)

    def to_document(self) -> dict:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta, "spec": self.spec}

    def canonical_json(self) -> str:
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
