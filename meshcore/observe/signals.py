"""The mesh's health signals: the one vocabulary shared by the collector, the dashboard and alerts.

The control plane's collector (:mod:`meshcore.observe.collector`) scrapes every proxy's merged metrics
endpoint at a fixed interval and turns two consecutive scrapes into one :class:`Signals` value; the
alert evaluator (:mod:`meshcore.observe.alerts`) and the dashboard read nothing else. Each signal is a
map from a label set to a number, like a Prometheus instant vector.

Signal names, their labels, and their unit (rates are per second over the last scrape interval):

======================================  =====================  ==========================================
name                                    labels                 value
======================================  =====================  ==========================================
``request_rate``                        service                requests/s the service received
``error_rate``                          service                fraction (0..1) of those answered 5xx
``p99_ms``                              service                99th percentile latency, milliseconds
``edge_request_rate``                   source, destination    requests/s on the edge
``edge_error_rate``                     source, destination    fraction (0..1) 5xx on the edge
``edge_p99_ms``                         source, destination    99th percentile latency on the edge
``version_edge_request_rate``           VERSION_EDGE_LABELS    requests/s from one version of a service
                                                               (in one datacenter) answered by one version
                                                               of another (in one datacenter), through one
                                                               mesh gateway (``gateway``: its node; ""
                                                               when direct). See "Versions and datacenters"
``version_edge_error_rate``             VERSION_EDGE_LABELS    fraction (0..1) of those answered 5xx/reset
``version_edge_p99_ms``                 VERSION_EDGE_LABELS    99th percentile latency, where measured
``gateway_connection_rate``             GATEWAY_LABELS         connections/s a mesh gateway (``gateway``:
                                                               its node; ``datacenter``: its own) opened
                                                               towards one route: ``service`` of its own
                                                               datacenter, or ``destination_datacenter``'s
                                                               gateways (``service`` "")
``gateway_connection_error_rate``       GATEWAY_LABELS         fraction (0..1) of those that failed (connect
                                                               failure, no healthy endpoint)
``gateway_bytes_rate``                  GATEWAY_LABELS         bytes/s it carried on that route (both ways)
``circuit_breaker_overflow``            service                requests/s shed by circuit breakers
                                                               (upstream_rq_pending_overflow + cx_overflow)
                                                               on clusters calling the service
``retry_exhausted``                     service                requests/s that ran out of retries
                                                               (upstream_rq_retry_limit_exceeded)
``policy_denied``                       service                requests/s denied by authorization policy
                                                               at the service's inbound listener
``policy_denied_by_caller``             source, service,       the same per caller and deciding policy,
                                        policy                 as the agents count them (from Envoy's
                                                               access log; ``source`` "unknown" where
                                                               the agent does not follow it)
``cert_expiry_seconds``                 spiffe_id, node        seconds until the SVID's not-after
                                                               (negative once expired, until renewed)
``cert_life_left_ratio``                spiffe_id, node        fraction of the certificate's lifetime
                                                               left (not-before to not-after); <= 0 once
                                                               expired, until renewed
``ca_root_expiry_seconds``              (none)                 seconds until the CA root's not-after
``proxy_out_of_sync``                   node                   1 when the proxy has not ACKed its current
                                                               config or its last build failed, else 0
``metrics_unreachable``                 node                   1 when the collector's last scrape of the
                                                               proxy's metrics failed (its rates are
                                                               stale or missing: the mesh is blind there)
``thread_restarts``                     thread                 control plane loops that died and were
                                                               restarted by the supervisor since the
                                                               previous collection (a count)
``resources_rejected``                  source                 stored resource documents left out of the
                                                               mesh as invalid (a count); ``source`` is
                                                               the store (backend and location)
``catalog_holding``                     source                 1 while the catalog source holds its last
                                                               good endpoints (the catalog looked like
                                                               lost data), else 0
``store_suspect``                       source                 1 while the resource store is suspect (its
                                                               backend lost resources; the last good
                                                               generation is held), else 0
======================================  =====================  ==========================================

``VERSION_EDGE_LABELS`` are ``source``, ``source_version``, ``source_datacenter``, ``destination``,
``destination_version``, ``destination_datacenter``, ``gateway``; ``GATEWAY_LABELS`` are ``gateway``,
``datacenter``, ``service``, ``destination_datacenter``.

Versions and datacenters (``version_edge_*``, ``meshctl graph --by version``): the caller's side is the
node's instance of the source service (its ``version`` label: the Consul meta a DestinationRule subset selects
on, and its datacenter). The called side is the instance that answered, from the caller's own Envoy: every
mesh upstream cluster has per-endpoint stats (``track_cluster_stats.per_endpoint_stats``), requests and
5xx/resets per endpoint address, and the address names the catalog instance, so its version and datacenter.
Neither the callee's inbound stats (they do not know the caller) nor subset clusters (they exist only where a
DestinationRule routes, and a subset may hold several versions) say that for every request. When the address
is a mesh gateway, the edge went through it (``gateway``): the destination datacenter is the gateway's when it
is a remote one, else the other datacenter holding instances of the service; the destination version is
known there only when all of the service's instances in that datacenter share one ("" otherwise). Envoy keeps
no latency histogram per endpoint: ``version_edge_p99_ms`` is the cluster's p99 when every request the cluster
carried in the interval went to that one version edge; else, when the edge was the only one into that version
in the interval (directly, and no gateway of this collector forwarded traffic to the service), the p99 of that
version's inbound listeners (the callee's side of the same requests); missing otherwise. Requests Envoy answered itself
(fault aborts, no healthy upstream) reached no endpoint: they count in ``edge_*`` only.

A service or edge without traffic in the interval has ``request_rate`` 0 and no ``error_rate`` /
``p99_ms`` entry (there is nothing to divide by), so an alert on them cannot fire on an idle service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

Labels = tuple[tuple[str, str], ...]
"""A label set as sorted ``(name, value)`` pairs, hashable; ``labels(service="reviews")``."""

VERSION_EDGE_LABELS = ("source", "source_version", "source_datacenter", "destination", "destination_version",
                       "destination_datacenter", "gateway")
GATEWAY_LABELS = ("gateway", "datacenter", "service", "destination_datacenter")

SIGNAL_LABELS: dict[str, tuple[str, ...]] = {
    "request_rate": ("service",),
    "error_rate": ("service",),
    "p99_ms": ("service",),
    "edge_request_rate": ("source", "destination"),
    "edge_error_rate": ("source", "destination"),
    "edge_p99_ms": ("source", "destination"),
    "version_edge_request_rate": VERSION_EDGE_LABELS,
    "version_edge_error_rate": VERSION_EDGE_LABELS,
    "version_edge_p99_ms": VERSION_EDGE_LABELS,
    "gateway_connection_rate": GATEWAY_LABELS,
    "gateway_connection_error_rate": GATEWAY_LABELS,
    "gateway_bytes_rate": GATEWAY_LABELS,
    "circuit_breaker_overflow": ("service",),
    "retry_exhausted": ("service",),
    "policy_denied": ("service",),
    "policy_denied_by_caller": ("source", "service", "policy"),
    "cert_expiry_seconds": ("spiffe_id", "node"),
    "cert_life_left_ratio": ("spiffe_id", "node"),
    "ca_root_expiry_seconds": (),
    "proxy_out_of_sync": ("node",),
    "metrics_unreachable": ("node",),
    "thread_restarts": ("thread",),
    "resources_rejected": ("source",),
    "catalog_holding": ("source",),
    "store_suspect": ("source",),
}
"""Every signal name and the labels each of its entries carries."""


def labels(**pairs: str) -> Labels:
    """A :data:`Labels` value from keyword arguments, sorted by name."""
    return tuple(sorted((k, str(v)) for k, v in pairs.items()))


@dataclass(frozen=True)
class Signals:
    """One evaluation's worth of signals, taken at unix time ``at``."""

    at: float
    values: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)

    def get(self, name: str) -> Mapping[Labels, float]:
        """Entries of one signal (empty when nothing reported it); :class:`KeyError` for an unknown name."""
        if name not in SIGNAL_LABELS:
            raise KeyError(f"unknown signal {name!r}; known: {', '.join(SIGNAL_LABELS)}")
        return self.values.get(name, {})


__all__ = ["GATEWAY_LABELS", "Labels", "SIGNAL_LABELS", "Signals", "VERSION_EDGE_LABELS", "labels"]
