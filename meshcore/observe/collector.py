"""The control plane's metrics collector: scrape every proxy, turn two scrapes into :class:`Signals`.

Every ``interval`` seconds :class:`MeshCollector` scrapes each proxy the control plane knows,
concurrently and with a short timeout: the VM agent's merged ``metrics`` URL when the proxy advertises
one (reachable from the control plane in a real deployment), else the Envoy admin
``/stats/prometheus``. Only addresses the control plane derived from the catalog are scraped (the node's
catalog address, see :func:`catalog_address`), and redirects are never followed. From this scrape and the previous one of the same proxy it computes one
:class:`~meshcore.observe.signals.Signals` value (:func:`signals_from_scrapes`, pure), keeps the last
``history`` seconds of them in a ring buffer, and hands each new value to its subscribers (alerting).

How the numbers are made (see :mod:`meshcore.observe.signals` for units):

* edges (``edge_*``) exactly as ``meshctl graph`` computes them (:mod:`meshcore.observe.graph`): the
  caller's outbound listener or clusters, so requests its Envoy answered itself (fault aborts, no
  healthy upstream) count;
* a service's ``request_rate`` / ``error_rate`` / ``p99_ms`` are its incoming edges summed (histograms
  merged before the quantile) as its callers saw them; a service no mesh caller is configured for
  falls back to its own inbound listeners (server side);
* ``circuit_breaker_overflow`` and ``retry_exhausted`` are keyed by the called service (the cluster's
  destination), ``policy_denied`` by the service whose inbound RBAC filters denied, ``policy_denied_by_caller``
  from the agents' per-caller counts (``meshcore_policy_denied_total``);
* ``proxy_out_of_sync`` comes from the control plane's own view (ACK state, last build error), and
  certificate expiry from the CA (:func:`ca_signals`, passed in as ``extra``);
* ``metrics_unreachable`` is 1 for every proxy no source answered this round (its rates are stale, then
  missing: the dashboard and alerts are blind there), 0 for every proxy scraped;
* the control plane's own health (``thread_restarts``, ``resources_rejected``, ``catalog_holding``,
  ``store_suspect``) comes from :class:`ControlPlaneSignals`, passed in as ``extra`` too.

Each proxy has its sources in order (:attr:`ScrapeTarget.urls`): the agent's merged ``/metrics``, then
Envoy's own stats through the agent (``/stats/prometheus`` on the same address: cheap, answered even when
the merged endpoint is slow). A round
gives each proxy ``timeout`` seconds in all (default :func:`default_timeout`, tied to the interval): the
first source gets :data:`PRIMARY_SHARE` of it when there are fallbacks, the rest share what is left.

A proxy no source answers (its error is in :attr:`errors`) keeps its previous scrape, so its next good
scrape yields the right rates over the longer span; meanwhile its last computed rates stand in for it for
up to :data:`CARRY_OVER_INTERVALS` intervals, so one slow scrape does not make its edges blink out.
:meth:`MeshCollector.freshness` says, per proxy, how old its figures are and where they came from
(``ok``, ``fallback``, ``stale``: carried over, ``unreachable``: missing), for the dashboard's header.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError, MeshError
from ..resources.store import store_health
from ._proxy_stats import INBOUND_PREFIX, ProxyStats, counter_delta, parse_proxy_stats
from .graph import _cluster_edge, _mangle, _proxy_edges, _Series, quantile_from_buckets
from ._versions import (Directory, EdgeKey, GatewayKey, VersionSeries, Workload, gateway_labels, gateway_routes, version_edge_labels,
                        version_edges, workload_of)
from .signals import SIGNAL_LABELS, Labels, Signals, labels

log = logging.getLogger("meshcore.observe.collector")

DEFAULT_INTERVAL_S = 5.0
DEFAULT_HISTORY_S = 3600.0
QUANTILE = 0.99
CARRY_OVER_INTERVALS = 3
PRIMARY_SHARE = 0.6  # of a proxy's timeout, for its first source when it has fallbacks
MIN_TIMEOUT_S = 1.0


def default_timeout(interval: float) -> float:
    """A proxy's scrape budget per round when ``--collect-timeout`` is not given: most of the interval, so a
    round ends before the next one is due (at least :data:`MIN_TIMEOUT_S`)."""
    return max(MIN_TIMEOUT_S, 0.8 * interval)

SignalValues = dict[str, dict[Labels, float]]


@dataclass(frozen=True)
class Scrape:
    """One proxy's parsed stats and when (``time.monotonic()``) they were read."""

    stats: ProxyStats
    at: float


@dataclass(frozen=True)
class ScrapeTarget:
    """What the collector needs to know of one proxy (the control plane builds these from its own state)."""

    node: str
    url: str = ""  # where its stats are read ("" when it advertises none): see scrape_url
    instances: tuple[tuple[str, str], ...] = ()  # (instance id, service) of the mesh services it hosts
    heard_from: bool = False  # connected, or known by its admin/metrics address (a catalog node with no Envoy
    #                           yet is not: it gets no proxy_out_of_sync)
    in_sync: bool = False  # ACKed its current configuration and its last build succeeded
    fallback_urls: tuple[str, ...] = ()  # tried in order when ``url`` does not answer: see fallback_urls()
    workloads: tuple[Workload, ...] = ()  # every catalog instance on the node, gateways included (the graph's
    #                                       versions and datacenters: see version_edges)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(u for u in (self.url, *self.fallback_urls) if u)


@dataclass(frozen=True)
class Freshness:
    """How current one proxy's figures are: ``state`` ``ok`` (its first source answered this round),
    ``fallback`` (a fallback source answered), ``stale`` (nothing answered; its last rates stand in) or
    ``unreachable`` (nothing answered for longer: its figures are missing); ``age_seconds`` since its last
    good scrape (None: never), ``source`` the URL that last answered, ``error`` why the others did not."""

    node: str
    state: str
    age_seconds: float | None
    source: str = ""
    error: str = ""


#: Bind addresses that mean "every interface": an agent bound there is reached at its node's catalog address.
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def _split(announced: str) -> tuple[str, int] | None:
    """``host:port`` (or ``[v6]:port``) -> ``(host without brackets, port)``; None when not that shape."""
    host, sep, port = announced.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or "/" in announced or "@" in announced:
        return None
    return host.strip("[]"), int(port)


def catalog_address(announced: str, catalog_host: str | None) -> str:
    """The ``host:port`` the control plane may fetch for an address a proxy announced in its ADS node metadata.

    Only the catalog decides *where*: the host is always ``catalog_host``, the node's address in the catalog
    (None: the node is not in the catalog, and nothing is fetched). The announcement contributes only its
    port, and only when its host is that same address or a wildcard bind (``0.0.0.0``, ``::``). Anything
    else ("" returned) would let a proxy point the control plane, or ``meshctl`` on an operator's machine, at
    an address of its choosing (SSRF): loopback services, cloud metadata endpoints, other networks."""
    if not catalog_host or not announced:
        return ""
    parsed = _split(announced)
    if parsed is None:
        return ""
    host, port = parsed
    catalog = catalog_host.strip("[]")
    if host not in _WILDCARD_HOSTS and host != catalog:
        return ""
    return f"[{catalog}]:{port}" if ":" in catalog else f"{catalog}:{port}"


def scrape_url(metrics: str = "", admin: str = "") -> str:
    """The URL to scrape: the VM agent's merged ``metrics`` URL when the proxy has one, else the Envoy
    admin's ``/stats/prometheus`` ("" when neither). Pass only addresses :func:`catalog_address` derived."""
    if metrics:
        return metrics
    if admin:
        return f"http://{admin}/stats/prometheus"
    return ""


def fallback_urls(metrics: str = "", admin: str = "") -> tuple[str, ...]:
    """Where to read a proxy's stats when :func:`scrape_url` does not answer: Envoy's own text through the
    agent (``/stats/prometheus`` at the agent's metrics address: cheap for the agent, so it answers when
    the merged endpoint is slow). The same catalog-derived host and port as the first URL, so a fallback
    never reaches anywhere it could not. Envoy's admin address is no fallback: on a VM it is local to the
    VM, and where it is reachable without the agent it is already the first URL (``admin`` is accepted for
    symmetry with :func:`scrape_url`)."""
    if not metrics.endswith("/metrics"):
        return ()
    return (metrics[: -len("/metrics")] + "/stats/prometheus",)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: a 3xx is answered as an error, its ``Location`` never fetched."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl!r} refused (not followed)",
                                     headers, fp)


#: The opener every fetch of a proxy's address uses: no redirects (a proxy could otherwise send the
#: fetch on to any address by answering 302), no proxies from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def open_url(url: str, timeout: float) -> tuple[int, bytes]:
    """GET ``url`` without following redirects; ``(status, body)``, error statuses (and refused
    redirects) included. URLError/OSError/ValueError when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read() if exc.fp is not None else b""
        except OSError:
            body = b""
        return exc.code, body


def fetch_text(url: str, timeout: float) -> str:
    """GET ``url`` (no redirects followed); :class:`MeshError` saying which URL and why when it does not answer 200."""
    try:
        status, body = open_url(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MeshError(f"scraping {url} failed ({getattr(exc, 'reason', exc)}); is the VM agent (or Envoy) "
                        "running and its metrics address reachable from the control plane?") from exc
    if status != 200:
        what = "a redirect, which is not followed" if 300 <= status < 400 else "not 200"
        raise MeshError(f"scraping {url} failed (HTTP {status}: {what}); the agent's /metrics answers 200 itself")
    return body.decode("utf-8", errors="replace")


# --- pure computation ----------------------------------------------------------------------

def _services_of(proxies: Sequence[ScrapeTarget]) -> dict[str, str]:
    """``{inbound HCM stat prefix: service}`` of every service instance the proxies host."""
    by_prefix: dict[str, str] = {}
    for p in proxies:
        for instance_id, service in p.instances:
            if instance_id:
                by_prefix[INBOUND_PREFIX + _mangle(instance_id)] = service
    return by_prefix


def signals_from_scrapes(previous: Mapping[str, Scrape], current: Mapping[str, Scrape],
                         proxies: Sequence[ScrapeTarget], *, at: float,
                         extra: Mapping[str, Mapping[Labels, float]] | None = None,
                         quantile: float = QUANTILE, unreachable: Mapping[str, bool] | None = None) -> Signals:
    """One :class:`Signals` value from two scrapes per node (``{node: Scrape}``) and the proxies' state.

    ``proxies`` say which services each node hosts and whether it is in sync;
    ``extra`` adds signals computed elsewhere (certificate expiry); ``at`` is the unix time to stamp;
    ``unreachable`` is ``{node: whether its scrape failed}`` for every proxy scraped (``metrics_unreachable``)."""
    service_of_prefix = _services_of(proxies)
    directory = Directory.of((p.node, p.workloads) for p in proxies)
    version_of_prefix = {INBOUND_PREFIX + _mangle(w.id): (w.service, w.version, w.datacenter)
                         for p in proxies for w in p.workloads if not w.kind}
    inbound_by_version: dict[tuple[str, str, str], _Series] = {}  # (service, version, datacenter) -> received
    versioned: dict[EdgeKey, VersionSeries] = {}
    versioned_rate: dict[EdgeKey, float] = defaultdict(float)
    gateways: dict[GatewayKey, tuple[float, float, float]] = {}  # connections/s, failed/s, bytes/s
    edges: dict[tuple[str, str], _Series] = {}
    edge_rate: dict[tuple[str, str], float] = defaultdict(float)
    inbound: dict[str, _Series] = {}
    inbound_rate: dict[str, float] = defaultdict(float)
    overflow: dict[str, float] = {}
    retries: dict[str, float] = {}
    denied: dict[str, float] = {}
    denied_by: dict[tuple[str, str, str], float] = {}

    for node, cur in current.items():
        prev = previous.get(node)
        if prev is None or cur.at <= prev.at:
            continue
        seconds = cur.at - prev.at
        before, after = prev.stats, cur.stats
        for edge, delta in _proxy_edges(before.graph, after.graph).items():
            edges.setdefault(edge, _Series()).add(delta)
            edge_rate[edge] += delta.total / seconds
        for vkey, part in version_edges(node, before, after, directory).items():
            versioned.setdefault(vkey, VersionSeries()).add(part)
            versioned_rate[vkey] += part.series.total / seconds
        for route, (cx, carried) in gateway_routes(node, before, after, directory).items():
            total, failed, rate = gateways.get(route, (0.0, 0.0, 0.0))
            gateways[route] = (total + cx.total / seconds, failed + cx.errors / seconds, rate + carried / seconds)
        for prefix, series in after.inbound.items():
            service = service_of_prefix.get(prefix)
            if service is not None:
                delta = series.minus(before.inbound.get(prefix, _Series()))
                inbound.setdefault(service, _Series()).add(delta)
                inbound_rate[service] += delta.total / seconds
                if prefix in version_of_prefix:
                    inbound_by_version.setdefault(version_of_prefix[prefix], _Series()).add(delta)
        for counters, earlier, out in ((after.overflow, before.overflow, overflow),
                                       (after.retry_exhausted, before.retry_exhausted, retries)):
            for cluster, value in counters.items():
                pair = _cluster_edge(cluster)
                if pair is not None:
                    out[pair[1]] = out.get(pair[1], 0.0) + counter_delta(value, earlier.get(cluster)) / seconds
        for prefix, value in after.denied.items():
            service = service_of_prefix.get(prefix)
            if service is not None:
                denied[service] = denied.get(service, 0.0) + counter_delta(value, before.denied.get(prefix)) / seconds
        for caller, value in after.denied_by.items():
            denied_by[caller] = denied_by.get(caller, 0.0) + counter_delta(value, before.denied_by.get(caller)) / seconds
        for prefix in after.inbound:  # a service with an inbound listener and no RBAC filter denies nothing
            if prefix in service_of_prefix:
                denied.setdefault(service_of_prefix[prefix], 0.0)

    values: SignalValues = {name: {} for name in SIGNAL_LABELS}
    for (src, dst), series in edges.items():
        key = labels(source=src, destination=dst)
        _golden(values, "edge_", key, edge_rate[(src, dst)], series, quantile)
    callers: dict[tuple[str, str, str], list[EdgeKey]] = defaultdict(list)  # a version's busy incoming edges
    for vkey, part in versioned.items():
        if part.series.total > 0:
            callers[vkey[3:6]].append(vkey)
    through_gateways = {(svc, dc) for (_, _, svc, dc), (cx, _, carried) in gateways.items() if svc and (cx or carried)}
    for vkey, part in versioned.items():
        vlabels = labels(**version_edge_labels(vkey))
        values["version_edge_request_rate"][vlabels] = versioned_rate[vkey]
        if part.series.total > 0:
            values["version_edge_error_rate"][vlabels] = part.series.errors / part.series.total
            p99 = quantile_from_buckets(quantile, part.series.buckets) if part.exact else None
            dest = vkey[3:6]
            if (p99 is None and not vkey[6] and dest[1] and callers[dest] == [vkey] and dest in inbound_by_version
                    and (dest[0], dest[2]) not in through_gateways):
                # that version's only caller this interval, directly: its inbound listeners' histogram is this edge's
                p99 = quantile_from_buckets(quantile, inbound_by_version[dest].buckets)
            if p99 is not None:
                values["version_edge_p99_ms"][vlabels] = p99
    for route, (cx_rate, cx_failed, byte_rate) in gateways.items():
        glabels = labels(**gateway_labels(route))
        values["gateway_connection_rate"][glabels] = cx_rate
        values["gateway_bytes_rate"][glabels] = byte_rate
        if cx_rate > 0:
            values["gateway_connection_error_rate"][glabels] = cx_failed / cx_rate
    called = {dst for _, dst in edges}
    for service in sorted(called | set(inbound)):
        if service in called:
            series, rate = _Series(), 0.0
            for (src, dst), s in edges.items():
                if dst == service:
                    series.add(s)
                    rate += edge_rate[(src, dst)]
        else:
            series, rate = inbound[service], inbound_rate[service]
        _golden(values, "", labels(service=service), rate, series, quantile)
    for name, per_service in (("circuit_breaker_overflow", overflow), ("retry_exhausted", retries),
                              ("policy_denied", denied)):
        for service, rate in per_service.items():
            values[name][labels(service=service)] = rate
    for (src, dst, policy), rate in denied_by.items():
        values["policy_denied_by_caller"][labels(source=src, service=dst, policy=policy)] = rate
    for p in proxies:
        if p.heard_from:
            values["proxy_out_of_sync"][labels(node=p.node)] = 0.0 if p.in_sync else 1.0
    for node, failed in (unreachable or {}).items():
        values["metrics_unreachable"][labels(node=node)] = 1.0 if failed else 0.0
    for name, entries in (extra or {}).items():
        if name not in SIGNAL_LABELS:
            raise KeyError(f"extra signal {name!r} is not one of {', '.join(SIGNAL_LABELS)}")
        values[name].update(entries)
    return Signals(at=at, values={k: v for k, v in values.items() if v})


def _golden(values: SignalValues, prefix: str, key: Labels, rate: float, series: _Series, quantile: float) -> None:
    values[prefix + "request_rate"][key] = rate
    if series.total > 0:
        values[prefix + "error_rate"][key] = series.errors / series.total
    # Not under the total: Envoy merges its histograms at the admin read that serves them (stats_flush_on_admin),
    # so the buckets trail the counters by one scrape, and a burst's latencies land in the interval after its
    # counts (for bounded traffic: an interval with no new requests).
    p = quantile_from_buckets(quantile, series.buckets)
    if p is not None:
        values[prefix + "p99_ms"][key] = p


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def ca_signals(ca: Any, now: float, nodes: Iterable[str] | None = None,
               identities: Iterable[tuple[str, str]] | None = None) -> SignalValues:
    """``cert_expiry_seconds`` and ``cert_life_left_ratio`` per (SPIFFE ID, node) of the CA's newest
    certificates, and ``ca_root_expiry_seconds`` of the current root.

    A certificate that expired without being renewed stays in (negative seconds, ratio <= 0) while the
    CA keeps its record (``ca.recent()``), so an expiry alert resolves on renewal, never on expiry.
    With ``nodes``, certificates of other nodes (VMs that left the mesh) are left out; node-less ones
    (the control plane's own) always count. With ``identities`` ((SPIFFE ID, node) pairs the catalog
    still runs), an expired workload certificate counts only while its service is still on that node."""
    wanted = None if nodes is None else set(nodes)
    expected = None if identities is None else set(identities)
    recent = getattr(ca, "recent", None)
    certs: dict[Labels, float] = {}
    ratios: dict[Labels, float] = {}
    for cert in (recent() if recent is not None else ca.issued()):
        node = cert.node or ""
        if wanted is not None and node and node not in wanted:
            continue
        key = labels(spiffe_id=cert.spiffe_id, node=node)
        not_after = _epoch(cert.not_after)
        left = not_after - now
        if (left <= 0 and expected is not None and node and "/meshcore/node/" not in cert.spiffe_id
                and (cert.spiffe_id, node) not in expected):
            continue  # the service left the node: its last certificate expiring is no alarm
        lifetime = max(not_after - _epoch(cert.not_before), 1.0)
        certs[key] = min(left, certs.get(key, left))
        ratios[key] = min(left / lifetime, ratios.get(key, left / lifetime))
    out: SignalValues = {"cert_expiry_seconds": certs, "cert_life_left_ratio": ratios}
    roots = [r for r in ca.state().get("roots", ()) if r.get("role") == "current"]
    if roots:
        out["ca_root_expiry_seconds"] = {(): _epoch(roots[0]["not_after"]) - now}
    return out


class ControlPlaneSignals:
    """The control plane's own health as signals, for the collector's ``extra``: call it once per collection.

    * ``thread_restarts{thread}``: restarts of each supervised loop since the previous call (every loop any
      of ``supervisors`` ran, 0 when it did not die), from their ``threads`` (``{name: ThreadHealth}``);
    * ``resources_rejected{source}``: how many stored documents ``rejected()`` (``{where: why}``) lists;
    * ``catalog_holding{source}``: 1 while ``catalog.health()`` says ``holding``, else 0;
    * ``store_suspect{source}``: 1 while :func:`~meshcore.resources.store.store_health` of ``store`` is
      suspect, else 0.

    ``source`` names the catalog source or the store as ``meshctl status`` does (``consul http://...``,
    ``dir /var/lib/meshcore/resources``). A source without a health report yields no catalog entry."""

    def __init__(self, *, catalog: Any, store: Any, rejected: Callable[[], Mapping[str, str]],
                 supervisors: Sequence[Any] = ()):
        self._catalog = catalog
        self._store = store
        self._rejected = rejected
        self._supervisors = tuple(supervisors)
        self._restarts: dict[str, int] = {}  # counts seen at the previous call (all start at 0 with the process)

    def __call__(self) -> SignalValues:
        counts: dict[str, int] = defaultdict(int)
        for supervisor in self._supervisors:
            for name, health in dict(supervisor.threads).items():
                counts[name] += int(health.restarts)
        restarts = {labels(thread=name): float(max(0, n - self._restarts.get(name, 0))) for name, n in counts.items()}
        self._restarts = dict(counts)
        out: SignalValues = {"thread_restarts": restarts}
        try:  # each part on its own: one source's failing report must not hide the others
            store = store_health(self._store)
            source = f"{store.backend} {store.location}".strip()
            out["resources_rejected"] = {labels(source=source): float(len(self._rejected()))}
            out["store_suspect"] = {labels(source=source): 0.0 if store.ok else 1.0}
        except Exception as exc:  # noqa: BLE001 - a store's health() must not stop the collection
            log.warning("resource store health for alerts failed (store_suspect, resources_rejected "
                        "left out this round): %s: %s", type(exc).__name__, exc)
        report = getattr(self._catalog, "health", None)
        if callable(report):
            try:
                own = report()
            except Exception as exc:  # noqa: BLE001 - as above
                log.warning("catalog source health for alerts failed (catalog_holding left out this round): "
                            "%s: %s", type(exc).__name__, exc)
            else:
                name = getattr(own, "kind", "") or type(self._catalog).__name__
                out["catalog_holding"] = {labels(source=name): 1.0 if getattr(own, "state", "") == "holding" else 0.0}
        return out


# --- the IO loop ---------------------------------------------------------------------------

class MeshCollector:
    """Scrapes the proxies every ``interval`` seconds and keeps ``history`` seconds of :class:`Signals`.

    ``proxies`` returns a :class:`ScrapeTarget` per proxy; ``extra`` returns extra signal values (e.g.
    :func:`ca_signals`). ``fetch(url, timeout) -> text`` is the network edge (tests hand in their own)."""

    def __init__(self, proxies: Callable[[], Sequence[ScrapeTarget]], interval: float = DEFAULT_INTERVAL_S,
                 history: float = DEFAULT_HISTORY_S, extra: Callable[[], Mapping] | None = None, *,
                 fetch: Callable[[str, float], str] = fetch_text, timeout: float | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 max_workers: int = 8):
        if not interval > 0:
            raise ConfigError(f"collector interval must be positive, got {interval!r} (e.g. --collect-interval 5s)")
        if not history >= interval:
            raise ConfigError(f"collector history ({history}s) must cover at least one interval ({interval}s)")
        self.interval = float(interval)
        self.history_seconds = float(history)
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"collector timeout must be positive, got {timeout!r} (e.g. --collect-timeout 4s)")
        self.timeout = float(timeout) if timeout is not None else default_timeout(self.interval)
        if self.timeout > self.interval:
            log.warning("collector timeout %.1fs exceeds its interval %.1fs: a round with a slow proxy runs into "
                        "the next one (rounds then start late, the figures' spans grow)", self.timeout, self.interval)
        self._proxies = proxies
        self._extra = extra
        self._fetch = fetch
        self._clock = clock
        self._monotonic = monotonic
        self._history: deque[Signals] = deque(maxlen=int(math.ceil(history / interval)) + 1)
        self._scrapes: dict[str, Scrape] = {}
        self._pairs: dict[str, tuple[Scrape, Scrape]] = {}  # node -> the last two good scrapes rates came from
        self._subscribers: list[Callable[[Signals], object]] = []
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="collector-scrape")
        self.errors: dict[str, str] = {}  # node -> why no source answered this round
        self.last_duration = 0.0
        self._last_ok: dict[str, tuple[float, str, bool]] = {}  # node -> (monotonic, url, was a fallback)
        self._tried: dict[str, str] = {}  # node -> why the sources before the one that answered did not

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> "MeshCollector":
        self._thread = threading.Thread(target=self._run, name="metrics-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._monotonic()
            try:
                self.collect_once()
            except Exception:  # a bug must not end collection: log it and try again next interval
                log.exception("metrics collection failed; retrying in %.1fs", self.interval)
            self._stop.wait(max(0.05, self.interval - (self._monotonic() - started)))

    # --- one round -------------------------------------------------------------------------
    def collect_once(self) -> Signals:
        """Scrape every proxy now, compute, record and publish one :class:`Signals` value."""
        with self._collect_lock:
            started = self._monotonic()
            proxies = list(self._proxies())
            targets = {p.node: p.urls for p in proxies if p.urls}
            fresh, errors = self._scrape_all(targets)
            previous = self._scrapes
            current = {n: s for n, s in previous.items() if n in targets}  # failed: keep the older scrape
            current.update(fresh)
            try:
                extra = dict(self._extra()) if self._extra is not None else {}
            except Exception as exc:  # noqa: BLE001 - e.g. the CA state unreadable; keep the rest flowing
                log.warning("collector extra signals failed: %s", exc)
                extra = {}
            pairs = {n: (previous[n], s) for n, s in fresh.items() if n in previous}
            horizon = self._monotonic() - CARRY_OVER_INTERVALS * self.interval
            for node in errors:  # a missed scrape: its last rates stand in, for a while
                if node in self._pairs and self._pairs[node][1].at >= horizon:
                    pairs[node] = self._pairs[node]
            signals = signals_from_scrapes({n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()},
                                           proxies, at=self._clock(), extra=extra,
                                           unreachable={n: n in errors for n in targets})
            self._scrapes = current
            self._pairs = {n: p for n, p in pairs.items() if n in targets}
            self.errors = errors
            self.last_duration = self._monotonic() - started
            with self._lock:
                self._history.append(signals)
                subscribers = list(self._subscribers)
        for node, err in sorted(errors.items()):
            log.debug("scrape failed node=%s: %s", node, err)
        for callback in subscribers:
            try:
                callback(signals)
            except Exception:  # noqa: BLE001 - one subscriber's bug must not starve the others
                log.exception("collector subscriber %r failed", callback)
        return signals

    def _budgets(self, count: int) -> list[float]:
        """Each source's timeout when a proxy has ``count`` of them (the first gets most)."""
        if count <= 1:
            return [self.timeout]
        rest = self.timeout * (1 - PRIMARY_SHARE) / (count - 1)
        return [self.timeout * PRIMARY_SHARE] + [rest] * (count - 1)

    def _scrape_one(self, node: str, urls: tuple[str, ...]) -> Scrape:
        failures = []
        for i, (url, budget) in enumerate(zip(urls, self._budgets(len(urls)))):
            started = self._monotonic()
            try:
                text = self._fetch(url, budget)
            except Exception as exc:  # noqa: BLE001 - every failure of a source is a reason to try the next
                took = self._monotonic() - started
                failures.append(f"{exc}" if took < budget else f"{url} did not answer within {budget:.1f}s ({exc})")
                continue
            at = self._monotonic()
            scrape = Scrape(parse_proxy_stats(text), at)
            self._last_ok[node] = (at, url, i > 0)
            self._tried[node] = "; ".join(failures)
            if i > 0:
                log.info("metrics of node=%s read from the fallback %s: %s", node, url, "; ".join(failures))
            return scrape
        raise MeshError("; ".join(failures) or "no source to scrape")

    def _scrape_all(self, targets: dict[str, tuple[str, ...]]) -> tuple[dict[str, Scrape], dict[str, str]]:
        futures = {node: self._pool.submit(self._scrape_one, node, urls) for node, urls in targets.items()}
        wait(futures.values(), timeout=self.timeout + 2)
        fresh: dict[str, Scrape] = {}
        errors: dict[str, str] = {}
        for node, fut in futures.items():
            if not fut.done():
                fut.cancel()
                errors[node] = f"scraping {', '.join(targets[node])} timed out after {self.timeout:.1f}s"
                continue
            exc = fut.exception()
            if exc is not None:
                errors[node] = str(exc)
            else:
                fresh[node] = fut.result()
        return fresh, errors

    def freshness(self) -> dict[str, Freshness]:
        """Per proxy scraped in the last round: how old its figures are and where they came from."""
        with self._collect_lock:
            errors, scrapes = dict(self.errors), set(self._scrapes)
        now = self._monotonic()
        horizon = CARRY_OVER_INTERVALS * self.interval
        out = {}
        for node in sorted(scrapes | set(errors)):
            last = self._last_ok.get(node)
            age = None if last is None else round(max(0.0, now - last[0]), 1)
            if node in errors:
                state = "stale" if age is not None and age <= horizon + self.interval else "unreachable"
                out[node] = Freshness(node, state, age, last[1] if last else "", errors[node])
            elif last is not None:
                out[node] = Freshness(node, "fallback" if last[2] else "ok", age, last[1], self._tried.get(node, ""))
        return out

    # --- readers ---------------------------------------------------------------------------
    def latest(self) -> Signals | None:
        """The newest :class:`Signals` value, None before the first collection."""
        with self._lock:
            return self._history[-1] if self._history else None

    def history(self, name: str, since: float | None = None) -> list[tuple[float, dict[Labels, float]]]:
        """``[(unix time, {labels: value})]`` of signal ``name`` from ``since`` (unix time) on, oldest first.

        :class:`KeyError` for a name not in :data:`~meshcore.observe.signals.SIGNAL_LABELS`."""
        if name not in SIGNAL_LABELS:
            raise KeyError(f"unknown signal {name!r}; known: {', '.join(SIGNAL_LABELS)}")
        with self._lock:
            kept = list(self._history)
        return [(s.at, dict(s.get(name))) for s in kept if since is None or s.at >= since]

    def subscribe(self, callback: Callable[[Signals], object]) -> Callable[[], None]:
        """Call ``callback(signals)`` after every collection (on the collector's thread; keep it quick).
        Returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe


__all__ = ["Workload", "workload_of", "ControlPlaneSignals", "DEFAULT_HISTORY_S", "DEFAULT_INTERVAL_S", "Freshness", "MeshCollector", "Scrape",
           "ca_signals", "catalog_address", "default_timeout", "fallback_urls", "fetch_text", "open_url", "ScrapeTarget",
           "scrape_url", "signals_from_scrapes"]
