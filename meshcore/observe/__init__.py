"""Observability computed from the proxies' own stats: the service graph (pure, no IO).

Re-exported lazily (on first use): a pure module reading :mod:`meshcore.observe.signals` must not load
the Prometheus parser or the collector's HTTP scraper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .collector import MeshCollector, ca_signals, signals_from_scrapes  # the control plane's collector
    from .graph import Edge, EnvoyStats, compute_edges, parse_envoy_prometheus, quantile_from_buckets

_LAZY = {
    "Edge": ".graph", "EnvoyStats": ".graph", "compute_edges": ".graph", "parse_envoy_prometheus": ".graph",
    "quantile_from_buckets": ".graph",
    "MeshCollector": ".collector", "ca_signals": ".collector", "signals_from_scrapes": ".collector",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["Edge", "EnvoyStats", "compute_edges", "parse_envoy_prometheus", "quantile_from_buckets",
           "MeshCollector", "ca_signals", "signals_from_scrapes"]
