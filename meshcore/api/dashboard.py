"""The dashboard API's wire contract: what ``GET /v1/dashboard/summary`` and ``GET /v1/dashboard/series``
answer (built by :mod:`meshcore.dashboard`, read by the page's script and by scripts of operators).

Rates are per second over the collector's last interval; ``None`` (JSON null) means "no traffic to measure"
(an idle service has no error rate and no p99), not zero. Standard library only, like the other contracts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._wire import Wire


@dataclass(frozen=True)
class ServiceRow(Wire):
    """One service or gateway: golden signals, resilience counters and its instances."""

    name: str
    kind: str  # "service" or "gateway"
    rps: float | None
    error_rate: float | None  # fraction of requests answered 5xx or reset
    p99_ms: float | None
    circuit_breaker_overflow: float  # requests shed by a circuit breaker, per second
    retry_exhausted: float  # requests whose retries ran out, per second
    policy_denied: float  # requests an AuthorizationPolicy refused, per second
    instances: int
    healthy_instances: int
    health: str  # idle | ok | warning | critical


@dataclass(frozen=True)
class EdgeRow(Wire):
    """Calls from one service (or gateway) to another."""

    source: str
    destination: str
    rps: float
    error_rate: float | None
    p99_ms: float | None
    health: str


@dataclass(frozen=True)
class ProxyRow(Wire):
    """One node's proxy: delivery state and whether its metrics could be read."""

    node: str
    services: tuple[str, ...]
    gateways: tuple[str, ...]
    connected: bool
    synced: bool
    state: str  # synced | pending | error | disconnected
    version: str
    error: str
    scrape_error: str
    # How current its metrics are: ok | fallback (Envoy's own stats, the merged endpoint failed) | stale (last
    # rates carried over) | unreachable (missing) | "" (not scraped); seconds since its last good scrape.
    metrics_state: str = ""
    metrics_age_seconds: float | None = None


@dataclass(frozen=True)
class CertificateRow(Wire):
    """An issued certificate still on record, soonest expiry first."""

    spiffe_id: str
    node: str
    expires_in_seconds: int
    lifetime_seconds: int
    fraction_left: float
    state: str  # ok | expiring | expired


@dataclass(frozen=True)
class CollectorState(Wire):
    """The metrics collector behind the figures: how often it scrapes and what it could not reach."""

    interval_seconds: float = 0.0
    history_seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # node -> why its metrics could not be read
    # node -> fallback | stale | unreachable, for every proxy whose figures are not fresh from its first source
    degraded: dict[str, str] = field(default_factory=dict)
    metrics_age_seconds: dict[str, float] = field(default_factory=dict)  # node -> seconds since its last good scrape
    last_duration_seconds: float = 0.0
    signals_at: float | None = None  # unix time of the signals shown; null before the first scrape


@dataclass(frozen=True)
class Totals(Wire):
    rps: float
    error_rate: float | None
    max_p99_ms: float | None
    edges: int
    policy_denied: float
    circuit_breaker_overflow: float
    retry_exhausted: float
    proxies: int
    proxies_synced: int
    certificates: int
    certificates_expiring: int  # expiring or expired


@dataclass(frozen=True)
class DashboardSummary(Wire):
    """``GET /v1/dashboard/summary``: everything the page shows, in one document."""

    generated_at: float
    trust_domain: str
    collector: CollectorState
    services: tuple[ServiceRow, ...]
    edges: tuple[EdgeRow, ...]
    proxies: tuple[ProxyRow, ...]
    certificates: tuple[CertificateRow, ...]
    ca_root_expires_in_seconds: int | None
    totals: Totals


@dataclass(frozen=True)
class Series(Wire):
    """One label set's history: ``points`` are ``[unix time, value]``, oldest first."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SeriesResponse(Wire):
    """``GET /v1/dashboard/series?signal=NAME``: one series per label set of that signal."""

    signal: str
    labels: tuple[str, ...]  # the signal's label names
    series: tuple[Series, ...] = ()


__all__ = ["CertificateRow", "CollectorState", "DashboardSummary", "EdgeRow", "ProxyRow", "Series",
           "SeriesResponse", "ServiceRow", "Totals"]
