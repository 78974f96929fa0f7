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
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Edge", "EnvoyStats", "GatewayHop", "GatewayView", "Path", "compute_edges", "edges_over_window",
           "parse_envoy_prometheus", "quantile_from_buckets", "version_edges_over_window", "with_datacenters"]

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
class GatewayHop:
    """A mesh gateway an edge went through, with its own figures towards the edge's destination over the window
    (connections it opened per second and the fraction that failed; None where this control plane does not
    scrape that gateway: another datacenter's)."""

    node: str
    datacenter: str
    connections_per_second: float | None = None
    connection_error_rate: float | None = None
    bytes_per_second: float | None = None  # both ways (a gateway forwards TLS it cannot read: no requests)

    def to_dict(self) -> dict:
        return {"node": self.node, "datacenter": self.datacenter,
                "connections_per_second": _r(self.connections_per_second, 3),
                "connection_error_rate": _r(self.connection_error_rate, 4),
                "bytes_per_second": _r(self.bytes_per_second, 1)}


@dataclass(frozen=True)
class Path:
    """One way an edge's requests went (``--by service``): from a datacenter to a datacenter, through a gateway
    or directly (``gateway`` "")."""

    source_datacenter: str
    destination_datacenter: str
    gateway: str
    rps: float
    error_rate: float
    requests: int

    def to_dict(self) -> dict:
        return {"source_datacenter": self.source_datacenter, "destination_datacenter": self.destination_datacenter,
                "gateway": self.gateway, "rps": round(self.rps, 3), "error_rate": round(self.error_rate, 4),
                "requests": self.requests}


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    rps: float
    error_rate: float
    p99_ms: float | None
    requests: int
    source_version: str = ""  # --by version ("" not known, or --by service)
    destination_version: str = ""
    source_datacenter: str = ""  # several, comma-separated, when the edge's requests came from or went to several
    destination_datacenter: str = ""
    gateways: tuple[GatewayHop, ...] = ()  # in the order the requests went through them
    paths: tuple[Path, ...] = ()  # --by service: per (datacenters, gateway)

    @property
    def crosses_datacenters(self) -> bool:
        return bool(self.gateways) or bool(set(_dcs(self.destination_datacenter)) - set(_dcs(self.source_datacenter)))

    def to_dict(self, versions: bool = False) -> dict:
        out = {"source": self.source, "destination": self.destination, "rps": round(self.rps, 3),
               "error_rate": round(self.error_rate, 4),
               "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2), "requests": self.requests}
        if versions:
            out.update(source_version=self.source_version, destination_version=self.destination_version)
        out.update(source_datacenter=self.source_datacenter, destination_datacenter=self.destination_datacenter,
                   crosses_datacenters=self.crosses_datacenters, gateways=[g.to_dict() for g in self.gateways])
        if not versions:
            out["paths"] = [p.to_dict() for p in self.paths]
        return out


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _dcs(value: str) -> list[str]:
    return [d for d in value.split(",") if d]


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
    by_upstream: dict[str, list[str]] = defaultdict(list)  # once per proxy, not once per edge
    for p in after.listeners:
        by_upstream[_listener_upstream(p)].append(p)
    out: dict[tuple[str, str], _Series] = {}
    for (src, dst), clusters in by_edge.items():
        delta = _Series()
        listeners = by_upstream.get(_mangle(dst), [])
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


#: ``{(source, destination): [(unix time, value), ...]}``: one signal's history per edge (the collector's); the
#: versioned signals' keys are their label values in :data:`~meshcore.observe.signals.VERSION_EDGE_LABELS` order.
EdgeHistory = dict[tuple[str, ...], list[tuple[float, float]]]


@dataclass(frozen=True)
class _Window:
    rps: float
    error_rate: float
    p99_ms: float | None
    requests: float


def _windows(rates: EdgeHistory, errors: EdgeHistory, p99s: EdgeHistory, times: list[float],
             interval: float) -> dict[tuple[str, ...], _Window]:
    ordered = sorted(set(times))
    gaps = {t: (t - ordered[i - 1]) if i else interval for i, t in enumerate(ordered)}
    span = sum(gaps.values())
    out = {}
    for key in sorted(set(rates) | set(errors) | set(p99s)):
        requests = {t: r * gaps.get(t, interval) for t, r in rates.get(key, ())}
        total = sum(requests.values())
        failed = sum(requests.get(t, 0.0) * e for t, e in errors.get(key, ()))
        p99 = [v for _, v in p99s.get(key, ())]
        out[key] = _Window(rps=total / span if span else 0.0, error_rate=failed / total if total > 0 else 0.0,
                           p99_ms=max(p99) if p99 else None, requests=total)
    return out


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
    return [Edge(source=k[0], destination=k[1], rps=w.rps, error_rate=w.error_rate, p99_ms=w.p99_ms,
                 requests=int(round(w.requests)))
            for k, w in _windows(rates, errors, p99s, times, interval).items()]


@dataclass(frozen=True)
class GatewayView:
    """What is known of the mesh gateways over a window: their figures per route (``gateway_connection_*``
    history, keys in :data:`~meshcore.observe.signals.GATEWAY_LABELS` order) and every gateway node's
    datacenter (from ``/v1/proxies``: also those of other datacenters, which this control plane does not scrape)."""

    routes: Mapping[tuple[str, ...], _Window] = field(default_factory=dict)
    datacenter_of: Mapping[str, str] = field(default_factory=dict)  # gateway node -> its datacenter
    bytes: Mapping[tuple[str, ...], float] = field(default_factory=dict)  # route -> bytes/s

    @classmethod
    def over_window(cls, rates: EdgeHistory, errors: EdgeHistory, times: list[float], interval: float,
                    datacenter_of: Mapping[str, str], bytes_rates: EdgeHistory | None = None) -> "GatewayView":
        carried = _windows(bytes_rates or {}, {}, {}, times, interval)
        return cls(_windows(rates, errors, {}, times, interval), dict(datacenter_of),
                   {k: w.rps for k, w in carried.items()})

    @classmethod
    def from_rates(cls, rates: Mapping[tuple[str, ...], float], errors: Mapping[tuple[str, ...], float],
                   datacenter_of: Mapping[str, str], bytes_rates: Mapping[tuple[str, ...], float] | None = None,
                   ) -> "GatewayView":
        """From one interval's ``gateway_connection_rate`` / ``_error_rate`` / ``gateway_bytes_rate`` (the
        dashboard's latest signals)."""
        return cls({k: _Window(rps=r, error_rate=errors.get(k, 0.0), p99_ms=None, requests=r) for k, r in rates.items()},
                   dict(datacenter_of), dict(bytes_rates or {}))

    def hops(self, destination: str, destination_dc: str, first: str) -> tuple[GatewayHop, ...]:
        """The gateways requests to ``destination`` in ``destination_dc`` went through, starting at the one the
        caller sent them to (``first``): a gateway of the caller's datacenter forwards to the destination
        datacenter's gateways, which hand them to the service's instances."""
        first_dc = self.datacenter_of.get(first, "") or next(
            (k[1] for k in self.routes if k[0] == first), "")
        out = [self._hop(first, first_dc, destination, destination_dc)]
        if first_dc and destination_dc and first_dc not in _dcs(destination_dc):
            remote = sorted(n for n, dc in self.datacenter_of.items() if dc in _dcs(destination_dc))
            out += [self._hop(n, self.datacenter_of[n], destination, destination_dc) for n in remote]
        return tuple(out)

    def _hop(self, node: str, dc: str, destination: str, destination_dc: str) -> GatewayHop:
        # its route: the service itself when the gateway is in the destination's datacenter, else that datacenter
        wanted = [(node, dc, destination, d) for d in _dcs(destination_dc)] if dc in _dcs(destination_dc) else \
            [(node, dc, "", d) for d in _dcs(destination_dc)]
        found = [self.routes[k] for k in wanted if k in self.routes]
        if not found:
            return GatewayHop(node, dc)
        rate = sum(w.rps for w in found)
        attempts = sum(w.requests for w in found)
        failed = sum(w.requests * w.error_rate for w in found)
        carried = [self.bytes[k] for k in wanted if k in self.bytes]
        return GatewayHop(node, dc, rate, failed / attempts if attempts > 0 else 0.0,
                          sum(carried) if carried else None)


def version_edges_over_window(rates: EdgeHistory, errors: EdgeHistory, p99s: EdgeHistory, times: list[float],
                              interval: float, gateways: GatewayView | None = None) -> list[Edge]:
    """:func:`edges_over_window` of the ``version_edge_*`` signals: one edge per source version and datacenter,
    destination version and datacenter, and gateway (with its hops, from ``gateways``)."""
    view = gateways or GatewayView()
    out = []
    for k, w in _windows(rates, errors, p99s, times, interval).items():
        src, sv, sdc, dst, dv, ddc, gw = (tuple(k) + ("",) * 7)[:7]
        out.append(Edge(source=src, destination=dst, rps=w.rps, error_rate=w.error_rate, p99_ms=w.p99_ms,
                        requests=int(round(w.requests)), source_version=sv, destination_version=dv,
                        source_datacenter=sdc, destination_datacenter=ddc,
                        gateways=view.hops(dst, ddc, gw) if gw else ()))
    return out


def with_datacenters(edges: list[Edge], versioned: list[Edge]) -> list[Edge]:
    """The service ``edges`` with their datacenters, gateways and per-path figures from the ``versioned`` ones
    (same window): the datacenters and gateways the requests went to (every known one while the edge is idle)."""
    by_pair: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for v in versioned:
        by_pair[(v.source, v.destination)].append(v)
    out = []
    for e in edges:
        parts = by_pair.get((e.source, e.destination), [])
        busy = [p for p in parts if p.requests > 0] or parts
        paths: dict[tuple[str, str, str], list[Edge]] = defaultdict(list)
        for p in parts:
            paths[(p.source_datacenter, p.destination_datacenter, p.gateways[0].node if p.gateways else "")].append(p)
        hops: dict[str, GatewayHop] = {}
        for p in busy:
            for hop in p.gateways:
                hops.setdefault(hop.node, hop)
        out.append(Edge(
            source=e.source, destination=e.destination, rps=e.rps, error_rate=e.error_rate, p99_ms=e.p99_ms,
            requests=e.requests,
            source_datacenter=",".join(sorted({d for p in busy for d in _dcs(p.source_datacenter)})),
            destination_datacenter=",".join(sorted({d for p in busy for d in _dcs(p.destination_datacenter)})),
            gateways=tuple(hops.values()),
            paths=tuple(_path(key, group) for key, group in sorted(paths.items()))))
    return out


def _path(key: tuple[str, str, str], group: list[Edge]) -> Path:
    rps = sum(g.rps for g in group)
    requests = sum(g.requests for g in group)
    failed = sum(g.requests * g.error_rate for g in group)
    return Path(key[0], key[1], key[2], rps, failed / requests if requests > 0 else 0.0, requests)
