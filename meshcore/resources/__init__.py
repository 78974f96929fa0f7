"""Mesh resources: Istio-style YAML documents, their validation, kinds and stores.

Public API::

    load_documents(text, source) -> list[Resource]      # raise ValidationError with every problem
    load_files(paths) -> list[Resource]                  # files, directories, "-" for stdin
    KINDS, get_kind(kind) -> KindSpec                    # the ordered kind registry
    effective_mtls(resources, labels, namespace, port)   # PeerAuthentication resolution
    DirectoryStore(root)                                 # the embedded-default ResourceStore
    StoreHealth, store_health(store)                     # a store's health (ok / suspect), meshctl store status
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .model import Resource, ResourceKey

if TYPE_CHECKING:
    from .dir_store import DirectoryStore
    from ..policies.peer_authentication.schema import ROOT_NAMESPACE, effective_mtls
    from .loader import load_documents, load_files, validate_document
    from .registry import KINDS, KindSpec, get_kind
    from .store import ResourceStore, StoreHealth, store_health

# Lazy: a kind's schema (some live in their policy folder, meshcore.policies.<kind>) imports this package's
# modules, and the registry imports every kind's schema; loading the registry here would be a circle.
__getattr__ = lazy_exports(__name__, {
    "DirectoryStore": ".dir_store", "ROOT_NAMESPACE": ".kinds._fields",
    "effective_mtls": "meshcore.policies.peer_authentication.schema", "load_documents": ".loader", "load_files": ".loader",
    "validate_document": ".loader", "KINDS": ".registry", "KindSpec": ".registry", "get_kind": ".registry",
    "ResourceStore": ".store", "StoreHealth": ".store", "store_health": ".store",
})

__all__ = [
    "DirectoryStore",
    "KINDS",
    "KindSpec",
    "ROOT_NAMESPACE",
    "Resource",
    "ResourceKey",
    "ResourceStore",
    "StoreHealth",
    "effective_mtls",
    "get_kind",
    "load_documents",
    "load_files",
    "store_health",
    "validate_document",
]
