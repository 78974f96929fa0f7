"""Observability computed from the proxies' own stats: the service graph (pure, no IO)."""

from .graph import Edge, EnvoyStats, compute_edges, parse_envoy_prometheus, quantile_from_buckets

__all__ = ["Edge", "EnvoyStats", "compute_edges", "parse_envoy_prometheus", "quantile_from_buckets"]
