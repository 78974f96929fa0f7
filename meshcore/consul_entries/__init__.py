"""Consul config entries as a source of mesh configuration (issue 15).

:func:`compile_entries` turns ``service-intentions``, ``service-defaults``, ``proxy-defaults``,
``service-resolver``, ``service-splitter`` and ``service-router`` entries into meshcore's own resources
(AuthorizationPolicy, DestinationRule, VirtualService), so the same code paths generate Envoy config;
everything an entry says that meshcore does not do is a :class:`Finding` with the entry and field path.
Pure; the IO is in :mod:`meshcore.consul_entries.files` and :mod:`meshcore.resources.consul_entries`.
"""

from .compile import compile_entries, is_compiled
from .files import entries_from_text, entry_of, load_entry_files, normalize_entry
from .intentions import precedence
from .model import (
    ENTRY_KINDS,
    ENTRY_LABEL,
    ORIGIN,
    ORIGIN_LABEL,
    CatalogFacts,
    Compiled,
    CompileOptions,
    ConfigEntry,
    Finding,
)
from .traffic import filter_labels

__all__ = [
    "ENTRY_KINDS",
    "ENTRY_LABEL",
    "ORIGIN",
    "ORIGIN_LABEL",
    "CatalogFacts",
    "CompileOptions",
    "Compiled",
    "ConfigEntry",
    "Finding",
    "compile_entries",
    "entries_from_text",
    "entry_of",
    "filter_labels",
    "is_compiled",
    "load_entry_files",
    "normalize_entry",
    "precedence",
]
