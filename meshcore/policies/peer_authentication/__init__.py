"""PeerAuthentication, one folder as Kuma keeps a policy: schema, validation and mTLS resolution (:mod:`.schema`),
the typed spec validation's output parses into (:mod:`.spec`), the plugin (:mod:`.plugin`) and its golden data
(``testdata/``).

The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import apply
    from .schema import KIND, KIND_NAME, ROOT_NAMESPACE, effective_mtls
    from .spec import PeerAuthenticationSpec, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema", "ROOT_NAMESPACE": ".schema",
    "effective_mtls": ".schema", "PeerAuthenticationSpec": ".spec", "parse": ".spec",
})

__all__ = ["apply", "KIND", "KIND_NAME", "ROOT_NAMESPACE", "effective_mtls", "PeerAuthenticationSpec", "parse"]
