"""Observability computed from the proxies' own stats: the service graph (pure, no IO)."""

from .graph import Edge, EnvoyStats, compute_edges, parse_envoy_prometheus, quantile_from_buckets
from .collector import MeshCollector, ca_signals, signals_from_scrapes  # the control plane's collector

__all__ = ["Edge", "EnvoyStats", "compute_edges", "parse_envoy_prometheus", "quantile_from_buckets",
           "MeshCollector", "ca_signals", "signals_from_scrapes"]
