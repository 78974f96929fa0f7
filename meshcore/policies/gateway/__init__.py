"""Gateway, one folder as every policy kind: schema and scope (:mod:`.schema`), typed spec (:mod:`.spec`), the
listeners, TLS and routes of an ingress gateway's servers (:mod:`.servers`), the plugin (:mod:`.plugin`) and golden
data (``testdata/``).

The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import apply
    from .schema import KIND, KIND_NAME, gateway_ref, gateways_for
    from .spec import GatewaySpec, Server, ServerTls, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema", "gateway_ref": ".schema", "gateways_for": ".schema",
    "GatewaySpec": ".spec", "Server": ".spec", "ServerTls": ".spec", "parse": ".spec",
})

__all__ = ["apply", "KIND", "KIND_NAME", "gateway_ref", "gateways_for", "GatewaySpec", "Server", "ServerTls", "parse"]
