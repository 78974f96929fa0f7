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
class GatewayHopRow(Wire):
    """A mesh gateway an edge went through, with its connections towards the edge's destination (None: this
    control plane does not scrape it, a gateway of another datacenter)."""

    node: str
    datacenter: str
    connections_per_second: float | None = None
    connection_error_rate: float | None = None
    bytes_per_second: float | None = None  # both ways


@dataclass(frozen=True)
class EdgeRow(Wire):
    """Calls from one service (or gateway) to another; the datacenters they came from and went to (several
    comma-separated), and the mesh gateways they went through when they crossed datacenters."""

    source: str
    destination: str
    rps: float
    error_rate: float | None
    p99_ms: float | None
    health: str
    source_datacenter: str = ""
    destination_datacenter: str = ""
    gateways: tuple[GatewayHopRow, ...] = ()


@dataclass(frozen=True)
class VersionEdgeRow(Wire):
    """Calls from one version of a service (in one datacenter) to the version of another that answered, through
    one gateway or directly (``gateway`` ""); a version "" is not known (no ``version`` label, or behind a
    gateway with several versions there)."""

    source: str
    source_version: str
    source_datacenter: str
    destination: str
    destination_version: str
    destination_datacenter: str
    gateway: str
    rps: float
    error_rate: float | None
    p99_ms: float | None
    health: str
    gateways: tuple[GatewayHopRow, ...] = ()


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
    version_edges: tuple[VersionEdgeRow, ...] = ()  # the graph by version (the page's "Versions" view)


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


# --- the graph's click-through: GET /v1/dashboard/service and GET /v1/dashboard/edge --------------------------------


@dataclass(frozen=True)
class InstanceRow(Wire):
    """One catalog instance of a service: where it runs and whether the catalog's health checks pass."""

    id: str
    node: str
    address: str  # its mesh (sidecar) address:port, or its own when it has none
    version: str  # its ``version`` label ("" when it has none)
    datacenter: str
    healthy: bool
    kind: str = ""  # "" (a service instance), or the gateway's kind


@dataclass(frozen=True)
class AppliedResource(Wire):
    """A mesh resource that applies to a service (or to an edge's calls), and why: ``why`` says how it names or
    selects the service ("host", "selects reviews-v1, reviews-v2", "mesh-wide", ...); ``detail`` its effect in a few
    words (an AuthorizationPolicy's action, a PeerAuthentication's mode, "not in effect: ..." for a shadowed one)."""

    kind: str
    namespace: str
    name: str
    why: str
    detail: str = ""


@dataclass(frozen=True)
class RouteRow(Wire):
    """One VirtualService http rule that applies to a caller's calls, in the order Envoy tries them: its match
    (``[]``: everything), its destinations (``reviews/v1=90, reviews/v2=10``), and the rest of the rule as written
    (fault, timeout, retries, mirror, rewrite, headers: ``extra``)."""

    virtual_service: str  # namespace/name of the VirtualService holding the rule (a delegate's, when delegated)
    index: int  # http[index] there
    name: str
    match: tuple[dict, ...]
    to: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AuthzVerdict(Wire):
    """What the authorization evaluator (``meshctl authz check``) decides for a representative call on one group of
    the destination's instances (instances with the same labels, port and protocol are decided alike)."""

    instances: tuple[str, ...]
    allowed: bool
    action: str
    policy: str | None
    reason: str


@dataclass(frozen=True)
class WindowFigures(Wire):
    """Golden signals over the window: ``rps`` the mean rate, ``error_rate`` the failed share of all requests,
    ``p99_ms`` the worst interval's p99 (None: no traffic to measure); ``latest_*`` the collector's last interval."""

    rps: float | None = None
    error_rate: float | None = None
    p99_ms: float | None = None
    latest_rps: float | None = None
    latest_error_rate: float | None = None
    latest_p99_ms: float | None = None
    points: int = 0  # collector intervals in the window


@dataclass(frozen=True)
class DeniedCaller(Wire):
    """Denials of one caller by one policy over the window, as the agents count them from Envoy's access log
    (``source`` "unknown" where an agent does not follow it; ``policy`` ``allow/no-rule-matched`` when ALLOW
    policies matched nothing)."""

    source: str
    policy: str
    per_second: float
    estimated_total: float


@dataclass(frozen=True)
class DenialsView(Wire):
    """Requests AuthorizationPolicies denied at the service's inbound listeners over the window (the collector's
    ``policy_denied`` signal, per second): mean and latest rate, an estimate of how many (rate x interval), the
    history as ``[unix time, per second]``, and who was denied by which policy (``callers``, the
    ``policy_denied_by_caller`` signal). ``note`` says where the callers come from and what is not known (paths)."""

    per_second: float | None
    latest_per_second: float | None
    estimated_total: float
    points: tuple[tuple[float, float], ...] = ()
    note: str = ""
    callers: tuple[DeniedCaller, ...] = ()  # most denied first


@dataclass(frozen=True)
class ServiceDetail(Wire):
    """``GET /v1/dashboard/service?name=SVC[&version=V][&since=15m]``: a graph node's click-through."""

    name: str
    version: str  # "" for the whole service
    kind: str  # "service" or "gateway"
    since_seconds: float
    instances: tuple[InstanceRow, ...]
    resources: tuple[AppliedResource, ...]
    figures: WindowFigures
    denials: DenialsView
    snapshot: str = ""  # the mesh snapshot's hash the resources were read from ("" before the first one)


@dataclass(frozen=True)
class EdgeDetail(Wire):
    """``GET /v1/dashboard/edge?source=A&destination=B[&source_version=&destination_version=][&since=15m]
    [&method=GET&path=/]``: a graph edge's click-through: its figures over the window, the VirtualService rules and
    DestinationRule that apply to the caller's calls, and whether AuthorizationPolicies allow ``authz_request`` (the
    call given by ``method`` and ``path``, a GET / by default)."""

    source: str
    destination: str
    source_version: str
    destination_version: str
    since_seconds: float
    figures: WindowFigures
    routes: tuple[RouteRow, ...]
    route_note: str  # which VirtualService routes the calls, or why none does
    destination_rule: AppliedResource | None
    traffic_policy: dict  # the DestinationRule's trafficPolicy for these calls (the subset's merged over the rule's)
    authz_request: str
    authz: tuple[AuthzVerdict, ...]
    authz_allowed: bool | None  # None: the evaluator could not decide (authz_note says why)
    authz_note: str = ""
    snapshot: str = ""


__all__ = ["AppliedResource", "AuthzVerdict", "CertificateRow", "CollectorState", "DashboardSummary", "DeniedCaller", "DenialsView",
           "EdgeDetail", "EdgeRow", "GatewayHopRow", "InstanceRow", "ProxyRow", "RouteRow", "Series", "SeriesResponse",
           "ServiceDetail", "ServiceRow", "Totals", "VersionEdgeRow", "WindowFigures"]
