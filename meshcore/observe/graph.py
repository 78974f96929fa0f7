"""The service graph from two scrapes of every proxy's Envoy stats (pure functions, no IO).

An edge is ``source service -> destination service``. Each proxy holds, per local service and declared
upstream, an outbound cluster ``outbound:<dst>|<src>`` (or ``outbound:<dst>|<src>|<subset>``) and an
outbound listener whose HTTP connection manager has the stat prefix ``outbound_<dst>_<port>``.

Which numbers feed an edge:

* the outbound listener's ``downstream_rq_total``, ``downstream_rq_xx{5}`` and ``downstream_rq_time``
  when the listener can be tied to one source: they count every request the app made, including the
  ones Envoy answered itself (an injected fault abort, no healthy upstream), which never reach a cluster;
* otherwise (TCP, or two local services calling the same upstream) the clusters' ``upstream_rq_total``,
  ``upstream_rq_xx{5}`` and ``upstream_rq_time`` summed over the edge's clusters.

Rates are deltas over the time between the two scrapes of each proxy; p99 is interpolated in the
bucket that holds the 99th percentile of the delta histogram, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Edge", "EnvoyStats", "compute_edges", "edges_over_window", "parse_envoy_prometheus",
           "quantile_from_buckets"]

# Envoy turns ':' in stat names into '_': cluster ``outbound:<dst>|<src>`` is reported as ``outbound_<dst>|<src>``.
CLUSTER_PREFIXES = ("outbound:", "outbound_")
LISTENER_PREFIX = "outbound_"


@dataclass
class _Series:
    """Request counters and a latency histogram (cumulative buckets by upper bound, milliseconds)."""

    total: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, other: "_Series") -> None:
        self.total += other.total
        self.errors += other.errors
        for le, count in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + count

    def minus(self, earlier: "_Series") -> "_Series":
        """Delta since ``earlier``; a counter that went down (Envoy restarted) counts from zero."""
        if self.total < earlier.total:
            return _Series(self.total, self.errors, dict(self.buckets))
        return _Series(self.total - earlier.total, max(0.0, self.errors - earlier.errors),
                       {le: max(0.0, c - earlier.buckets.get(le, 0.0)) for le, c in self.buckets.items()})


@dataclass
class EnvoyStats:
    """What the graph needs from one Envoy's ``/stats/prometheus``: per cluster and per HCM stat prefix."""

    clusters: dict[str, _Series] = field(default_factory=dict)
    listeners: dict[str, _Series] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    rps: float
    error_rate: float
    p99_ms: float | None
    requests: int

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "rps": round(self.rps, 3),
                "error_rate": round(self.error_rate, 4),
                "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2), "requests": self.requests}


def parse_envoy_prometheus(text: str) -> EnvoyStats:
    """Pick the request counters and latency histograms of outbound clusters and listeners."""
    stats = EnvoyStats()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "envoy_cluster_name" in labels:
                key = labels["envoy_cluster_name"]
                if not key.startswith(CLUSTER_PREFIXES) or "|" not in key:
                    continue
                series = stats.clusters.setdefault(key, _Series())
                prefix = "envoy_cluster_upstream_rq"
            elif "envoy_http_conn_manager_prefix" in labels:
                key = labels["envoy_http_conn_manager_prefix"]
                if not key.startswith(LISTENER_PREFIX):
                    continue
                series = stats.listeners.setdefault(key, _Series())
                prefix = "envoy_http_downstream_rq"
            else:
                continue
            _take(series, prefix, sample.name, labels, sample.value)
    return stats


def _take(series: _Series, prefix: str, name: str, labels: dict, value: float) -> None:
    if name == prefix + "_total":
        series.total = value
    elif name in (prefix + "_xx", prefix + "_xx_total") and labels.get("envoy_response_code_class") == "5":
        series.errors = value
    elif name == prefix + "_time_bucket":
        le = labels.get("le", "+Inf")
        series.buckets[math.inf if le in ("+Inf", "Inf") else float(le)] = value


def quantile_from_buckets(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``{upper bound: count}``; None when it is empty.

    Linear interpolation inside the bucket holding the rank (lower bound 0 for the first bucket);
    a rank in the ``+Inf`` bucket answers the highest finite bound, as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _cluster_edge(name: str) -> tuple[str, str] | None:
    """``outbound:<dst>|<src>[|<subset>]`` (or ``outbound_...``, as Envoy reports it) -> (src, dst)."""
    parts = name[len(CLUSTER_PREFIXES[0]):].split("|")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return parts[1], parts[0]


def _mangle(name: str) -> str:
    return name.replace(":", "_").replace("|", "_").replace(".", "_")


def _proxy_edges(before: EnvoyStats, after: EnvoyStats) -> dict[tuple[str, str], _Series]:
    """One proxy's per-edge deltas between two scrapes."""
    by_edge: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cluster in after.clusters:
        edge = _cluster_edge(cluster)
        if edge is not None:
            by_edge[edge].append(cluster)
    sources_of: dict[str, set[str]] = defaultdict(set)
    for src, dst in by_edge:
        sources_of[dst].add(src)
    out: dict[tuple[str, str], _Series] = {}
    for (src, dst), clusters in by_edge.items():
        delta = _Series()
        listeners = [p for p in after.listeners if _listener_upstream(p) == _mangle(dst)]
        if listeners and len(sources_of[dst]) == 1:
            for p in listeners:
                delta.add(after.listeners[p].minus(before.listeners.get(p, _Series())))
        else:
            for c in clusters:
                delta.add(after.clusters[c].minus(before.clusters.get(c, _Series())))
        out[(src, dst)] = delta
    return out


def _listener_upstream(prefix: str) -> str:
    """``outbound_<mangled dst>_<port>`` -> mangled dst ("" when it is not that shape)."""
    head, _, port = prefix[len(LISTENER_PREFIX):].rpartition("_")
    return head if port.isdigit() else ""


def compute_edges(scrapes: dict[str, tuple[EnvoyStats, EnvoyStats, float]], quantile: float = 0.99) -> list[Edge]:
    """Edges from ``{proxy: (first scrape, second scrape, seconds between them)}``, summed over proxies.

    Every edge the proxies know (a configured outbound cluster) is listed, idle ones with rps 0."""
    totals: dict[tuple[str, str], _Series] = {}
    rates: dict[tuple[str, str], float] = defaultdict(float)
    for before, after, seconds in scrapes.values():
        for edge, delta in _proxy_edges(before, after).items():
            totals.setdefault(edge, _Series()).add(delta)
            if seconds > 0:
                rates[edge] += delta.total / seconds
    edges = []
    for (src, dst), s in sorted(totals.items()):
        edges.append(Edge(source=src, destination=dst, rps=rates[(src, dst)],
                          error_rate=(s.errors / s.total) if s.total > 0 else 0.0,
                          p99_ms=quantile_from_buckets(quantile, s.buckets), requests=int(s.total)))
    return edges


#: ``{(source, destination): [(unix time, value), ...]}``: one signal's history per edge (the collector's).
EdgeHistory = dict[tuple[str, str], list[tuple[float, float]]]


def edges_over_window(rates: EdgeHistory, errors: EdgeHistory, p99s: EdgeHistory,
                      times: list[float], interval: float) -> list[Edge]:
    """Edges over a window from the control plane collector's per-interval history (``edge_request_rate``,
    ``edge_error_rate``, ``edge_p99_ms``); ``times`` are the collections in the window (unix time), each
    rate covering the time since the one before (``interval`` for the first).

    ``requests`` is each interval's rate times its length, summed; ``rps`` is that over the window's
    length (an interval without a point for an edge counts as idle); the error ratio is weighted by
    requests; ``p99_ms`` is the highest interval p99 of the window (the collector keeps quantiles per
    interval, not the histograms, so this bounds the window's p99 from above). An edge the proxies are
    configured for but that carried nothing is listed with rps 0."""
    ordered = sorted(set(times))
    gaps = {t: (t - ordered[i - 1]) if i else interval for i, t in enumerate(ordered)}
    span = sum(gaps.values())
    edges = []
    for edge in sorted(set(rates) | set(errors) | set(p99s)):
        requests = {t: r * gaps.get(t, interval) for t, r in rates.get(edge, ())}
        total = sum(requests.values())
        failed = sum(requests.get(t, 0.0) * e for t, e in errors.get(edge, ()))
        p99 = [v for _, v in p99s.get(edge, ())]
        edges.append(Edge(source=edge[0], destination=edge[1], rps=total / span if span else 0.0,
                          error_rate=failed / total if total > 0 else 0.0,
                          p99_ms=max(p99) if p99 else None, requests=int(round(total))))
    return edges
