"""RequestAuthentication, one folder as every policy kind: schema and scope (:mod:`.schema`), the typed spec
(:mod:`.spec`), the Envoy ``jwt_authn`` config (:mod:`.jwt`), the plugin (:mod:`.plugin`) and golden data
(``testdata/``).

The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .jwt import JWT_AUTHN, JWT_METADATA_NS, PAYLOAD_KEY, jwt_authentication
    from .plugin import apply
    from .schema import KIND, KIND_NAME, authentications_for, selects
    from .spec import JwtRule, RequestAuthenticationSpec, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema", "authentications_for": ".schema",
    "selects": ".schema", "JwtRule": ".spec", "RequestAuthenticationSpec": ".spec", "parse": ".spec",
    "JWT_AUTHN": ".jwt", "JWT_METADATA_NS": ".jwt", "PAYLOAD_KEY": ".jwt", "jwt_authentication": ".jwt",
})

__all__ = ["apply", "KIND", "KIND_NAME", "authentications_for", "selects", "JwtRule", "RequestAuthenticationSpec",
           "parse", "JWT_AUTHN", "JWT_METADATA_NS", "PAYLOAD_KEY", "jwt_authentication"]
