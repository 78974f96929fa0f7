"""Mesh resources: Istio-style YAML documents, their validation, kinds and stores.

Public API::

    load_documents(text, source) -> list[Resource]      # raise ValidationError with every problem
    load_files(paths) -> list[Resource]                  # files, directories, "-" for stdin
    KINDS, get_kind(kind) -> KindSpec                    # the ordered kind registry
    effective_mtls(resources, labels, namespace, port)   # PeerAuthentication resolution
    DirectoryStore(root)                                 # the embedded-default ResourceStore
"""

from .dir_store import DirectoryStore
from .kinds.peer_authentication import ROOT_NAMESPACE, effective_mtls
from .loader import load_documents, load_files, validate_document
from .model import Resource, ResourceKey
from .registry import KINDS, KindSpec, get_kind
from .store import ResourceStore

__all__ = [
    "DirectoryStore",
    "KINDS",
    "KindSpec",
    "ROOT_NAMESPACE",
    "Resource",
    "ResourceKey",
    "ResourceStore",
    "effective_mtls",
    "get_kind",
    "load_documents",
    "load_files",
    "validate_document",
]
