"""DestinationRule, one folder as Kuma keeps a policy: schema and validation (:mod:`.schema`), the typed spec
validation's output parses into (:mod:`.spec`), the plugin (:mod:`.plugin`), its Envoy helpers
(:mod:`.clusters`: traffic policy on clusters, hash policies; :mod:`.cluster_options`: hash algorithms, warmup,
upstream protocol, retry budget, PROXY protocol; :mod:`.tcp_options`: tunnel and TCP idle timeout on tcp_proxy;
:mod:`.locality`: failover priorities; :mod:`.fields_schema`: those blocks' schemas) and its
golden data (``testdata/``: each case's resources, checked against ``tests/xds/golden/*/<case>.golden``).

The names below load lazily: the resource registry imports :mod:`.schema`, which must not pull in the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import apply
    from .schema import KIND, KIND_NAME
    from .spec import DestinationRuleSpec, TrafficPolicy, parse

__getattr__ = lazy_exports(__name__, {
    "apply": ".plugin", "KIND": ".schema", "KIND_NAME": ".schema",
    "DestinationRuleSpec": ".spec", "TrafficPolicy": ".spec", "parse": ".spec",
})

__all__ = ["apply", "KIND", "KIND_NAME", "DestinationRuleSpec", "TrafficPolicy", "parse"]
