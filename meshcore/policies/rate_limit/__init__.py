"""RateLimit, one folder as Kuma keeps a policy: schema, validation and scope (:mod:`.schema`), the typed spec
validation's output parses into (:mod:`.spec`), the plugin (:mod:`.plugin`), its Envoy configs (:mod:`.filters`:
local rate limits and the regular expressions a ``match`` becomes) and its golden data (``testdata/``).

The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .filters import http_local_rate_limit, method_regex, network_local_rate_limits, path_regex, source_regex
    from .plugin import apply
    from .schema import KIND, KIND_NAME, limits_for
    from .spec import Limit, RateLimitSpec, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema", "limits_for": ".schema",
    "Limit": ".spec", "RateLimitSpec": ".spec", "parse": ".spec",
    "http_local_rate_limit": ".filters", "network_local_rate_limits": ".filters",
    "path_regex": ".filters", "method_regex": ".filters", "source_regex": ".filters",
})

__all__ = ["apply", "KIND", "KIND_NAME", "limits_for", "Limit", "RateLimitSpec", "parse", "http_local_rate_limit",
           "network_local_rate_limits", "path_regex", "method_regex", "source_regex"]
