"""Sidecar, one folder as Kuma keeps a policy: schema and cross-resource checks (:mod:`.schema`), the typed spec
(:mod:`.spec`), the egress listeners (:mod:`.egress`), the plugin (:mod:`.plugin`) and golden data (``testdata/``).
Scoping itself is generation's (:mod:`meshcore.xds.generate.sidecar_scope`). Names load lazily: the resource
registry imports :mod:`.schema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .egress import EgressBuilder, EgressProblem
    from .plugin import apply
    from .schema import KIND, KIND_NAME, validate_set
    from .spec import EgressListener, EgressPort, SidecarSpec, parse, spec_of

__getattr__ = lazy_exports(__name__, {
    "EgressBuilder": ".egress", "EgressProblem": ".egress", "apply": ".plugin", "KIND": ".schema",
    "KIND_NAME": ".schema", "validate_set": ".schema", "EgressListener": ".spec", "EgressPort": ".spec",
    "SidecarSpec": ".spec", "parse": ".spec", "spec_of": ".spec",
})

__all__ = ["EgressBuilder", "EgressProblem", "apply", "KIND", "KIND_NAME", "validate_set", "EgressListener",
           "EgressPort", "SidecarSpec", "parse", "spec_of"]
