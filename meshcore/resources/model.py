"""Mesh resources: Istio-style YAML documents (apiVersion, kind, metadata, spec)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    """One validated resource. ``spec`` is plain JSON data; treat it as read-only.

    ``spec`` stays the raw validated mapping (what stores write and what the engine reads to know which
    services a resource affects); :attr:`typed` is the same spec parsed into its kind's frozen dataclasses.
    """

    api_version: str
    kind: str
    name: str
    namespace: str
    spec: Any
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    """Only the annotations meshcore acts on (:data:`meshcore.resources.loader.KNOWN_ANNOTATIONS`); the loader
    drops the others with a note."""
    _typed: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def typed(self) -> Any:
        """The kind's typed spec (``KindSpec.parse`` of :attr:`spec`), parsed once and kept.

        The loader parses it when it validates a document (parse, don't validate); a resource read back from
        a store (already validated when it was applied) parses on first use. A kind without a ``parse`` gives
        the raw spec.
        """
        if self._typed is None:
            from .registry import KINDS  # lazy: the registry imports every kind's schema, which imports this module

            kind = KINDS.get(self.kind)
            parse = kind.parse if kind is not None else None
            object.__setattr__(self, "_typed", parse(self.spec or {}) if parse is not None else self.spec)
        return self._typed

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)

    def to_document(self) -> dict:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta, "spec": self.spec}

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def canonical_json(self) -> str:
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
