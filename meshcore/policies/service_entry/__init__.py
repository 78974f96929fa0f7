"""ServiceEntry, one folder as Kuma keeps a policy: schema, validation and cross-resource checks (:mod:`.schema`),
the typed spec (:mod:`.spec`), its clusters (:mod:`.clusters`), the plugin for upstreams naming its hosts
(:mod:`.plugin`) and golden data (``testdata/``). Names load lazily: the resource registry imports :mod:`.schema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .clusters import entry_of, external_cluster, host_index, upstream_port
    from .plugin import apply, upstream_family
    from .schema import KIND, KIND_NAME, entry_for, validate_set
    from .spec import EntryEndpoint, EntryPort, ServiceEntrySpec, parse, spec_of

__getattr__ = lazy_exports(__name__, {
    "entry_of": ".clusters", "external_cluster": ".clusters", "host_index": ".clusters", "upstream_port": ".clusters",
    "apply": ".plugin", "upstream_family": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema",
    "entry_for": ".schema", "validate_set": ".schema", "EntryEndpoint": ".spec", "EntryPort": ".spec",
    "ServiceEntrySpec": ".spec", "parse": ".spec", "spec_of": ".spec",
})

__all__ = ["entry_of", "external_cluster", "host_index", "upstream_port", "apply", "upstream_family", "KIND",
           "KIND_NAME", "entry_for", "validate_set", "EntryEndpoint", "EntryPort", "ServiceEntrySpec", "parse",
           "spec_of"]
